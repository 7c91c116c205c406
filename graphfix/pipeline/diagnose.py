"""Diagnosing one model: the static rules, then the onnxruntime probe, in one report (for `diagnose`, `check`
and the Python API)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from graphfix.analysis.given_shapes import check_trace_shapes
from graphfix.core.errors import GraphfixError
from graphfix.core.rule import Finding, Rejection, RuleOptions, Severity
from graphfix.io.loading import LoadedModel, load_model
from graphfix.pipeline.engine import diagnose_model, diagnose_solving


@dataclass
class ModelReport:
    """What `diagnose` found in one model, or why it could not look."""

    path: str
    findings: list[Finding] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    error: str | None = None
    exit_code: int = 0  # of the error, when there is one
    skipped: str = ""  # what was not analysed (the probe, for one): a finding says it too

    def to_json(self, show_rejected: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path,
            "error": self.error,
            "findings": [f.to_json() for f in self.findings],
        }
        if show_rejected:
            data["rejected"] = [r.to_json() for r in self.rejections]
        return data


def diagnose_loaded(loaded: LoadedModel, rules, rule_options: RuleOptions, probe_options=None) -> ModelReport:
    """Static rules, then (unless `probe_options` is None) runtime probing with onnxruntime. A model over the node
    budget once its functions are expanded gets the static rules on its unexpanded graph and no probe."""
    check_trace_shapes(loaded.proto, rule_options)
    if loaded.unexpanded:
        diagnosis = diagnose_model(without_functions(loaded.proto), loaded.base_dir, rules, rule_options)
        report = ModelReport(loaded.name, diagnosis.findings, diagnosis.rejections,
                             skipped=f"{loaded.unexpanded}: the functions were not expanded (the rules saw each "
                             "call as one node of unknown shapes) and the model was not run; nothing is proven")
        report.findings.append(budget_finding(report.skipped))
        return report
    diagnosis, solved = diagnose_solving(loaded.proto, loaded.base_dir, rules, rule_options,
                                         solve=probe_options is not None)
    report = ModelReport(loaded.name, diagnosis.findings, diagnosis.rejections)
    if probe_options is not None:
        from graphfix.validate.sizes import trace_sizes

        traced = trace_sizes(loaded.proto, rule_options.trace_shapes)
        if traced and not probe_options.trace_sizes:  # --trace-shape also sets the first probe size
            probe_options = dataclasses.replace(probe_options, trace_sizes=traced)
        if solved and not probe_options.trace_sizes:  # as repair's proof: known where the original runs there
            probe_options = dataclasses.replace(probe_options, solved_sizes=solved)

        merge_runtime_findings(report.findings, runtime_findings(loaded, probe_options))
    return report


def without_functions(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model without its model-local functions: their calls stay, as nodes nothing expands."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    del copy.functions[:]
    return copy


def budget_finding(message: str) -> Finding:
    """What a budget made the command skip: an error, since the model is not proven (exit 1)."""
    return Finding("GF000", "analysis-skipped", Severity.ERROR, message,
                   hint="Not a failure of the model: graphfix stopped at a budget; raise it to analyse the rest.")


def runtime_findings(loaded: LoadedModel, probe_options) -> list[Finding]:
    """What onnxruntime reported when the probe ran the model at several sizes, as findings."""
    from graphfix.validate import probe

    return [failure.to_finding() for failure in probe(loaded, probe_options)]


def merge_runtime_findings(findings: list[Finding], runtime: list[Finding]) -> None:
    """Add what onnxruntime reported; a failure at a node a static finding already names confirms that finding
    instead of repeating it, and makes it as severe as the failure: a warning that the graph alone could only
    suspect (a Reshape entry that equals a size given with --trace-shape) is an error once onnxruntime fails
    there (helper 103: the right --trace-shape turned a confirmed failure into exit 0)."""
    for found in runtime:
        same = next((f for f in findings if f.rule == found.rule and set(f.nodes) & set(found.nodes)), None)
        if same is None:
            findings.append(found)
        else:
            same.message = f"{same.message.rstrip('.')}. Confirmed by onnxruntime: {found.message}"
            same.severity = max(same.severity, found.severity, key=lambda severity: severity.rank)


def diagnose_path(path: Path, rules, rule_options: RuleOptions, probe_options=None) -> ModelReport:
    """Like diagnose_loaded, turning a model that cannot be loaded into a report with its error."""
    try:
        loaded = load_model(path, unexpanded=True)
    except GraphfixError as exc:
        return ModelReport(str(path), error=str(exc), exit_code=exc.exit_code)
    return diagnose_loaded(loaded, rules, rule_options, probe_options)
