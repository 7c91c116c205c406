"""The Python API and the per-model work the CLI commands share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from graphfix.core.context import RuleOptions
from graphfix.core.engine import diagnose_model
from graphfix.core.errors import GraphfixError
from graphfix.core.registry import select_rules
from graphfix.core.rule import Finding, Rejection
from graphfix.io.loading import LoadedModel, from_proto, load_model

if TYPE_CHECKING:  # the repair pipeline imports onnxruntime and the proof: not for `diagnose --static`
    from graphfix.pipeline.repair import RepairResult


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


def load(model_or_path: str | Path | onnx.ModelProto, base_dir: Path | None = None, *,
         unexpanded: bool = False) -> LoadedModel:
    if isinstance(model_or_path, onnx.ModelProto):
        return from_proto(model_or_path, base_dir, unexpanded=unexpanded)
    return load_model(model_or_path, unexpanded=unexpanded)


def diagnose_loaded(loaded: LoadedModel, rules, rule_options: RuleOptions, probe_options=None) -> ModelReport:
    """Static rules, then (unless `probe_options` is None) runtime probing with onnxruntime. A model over the node
    budget once its functions are expanded gets the static rules on its unexpanded graph and no probe."""
    if loaded.unexpanded:
        diagnosis = diagnose_model(without_functions(loaded.proto), loaded.base_dir, rules, rule_options)
        report = ModelReport(loaded.name, diagnosis.findings, diagnosis.rejections,
                             skipped=f"{loaded.unexpanded}: the functions were not expanded (the rules saw each "
                             "call as one node of unknown shapes) and the model was not run; nothing is proven")
        report.findings.append(budget_finding(report.skipped))
        return report
    diagnosis = diagnose_model(loaded.proto, loaded.base_dir, rules, rule_options)
    report = ModelReport(loaded.name, diagnosis.findings, diagnosis.rejections)
    if probe_options is not None:
        from graphfix.pipeline.repair import trace_sizes
        from graphfix.validate import probe

        traced = trace_sizes(loaded.proto, rule_options.trace_shapes)
        if traced and not probe_options.trace_sizes:  # --trace-shape also sets the first probe size
            probe_options = dataclasses.replace(probe_options, trace_sizes=traced)

        merge_runtime_findings(report.findings, [failure.to_finding() for failure in probe(loaded, probe_options)])
    return report


def without_functions(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model without its model-local functions: their calls stay, as nodes nothing expands."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    del copy.functions[:]
    return copy


def budget_finding(message: str) -> Finding:
    """What a budget made the command skip: an error, since the model is not proven (exit 1)."""
    from graphfix.core.rule import Severity

    return Finding("GF000", "analysis-skipped", Severity.ERROR, message,
                   hint="Not a failure of the model: graphfix stopped at a budget; raise it to analyse the rest.")


def merge_runtime_findings(findings: list[Finding], runtime: list[Finding]) -> None:
    """Add what onnxruntime reported; a failure at a node a static finding already names confirms that finding
    instead of repeating it."""
    for found in runtime:
        same = next((f for f in findings if f.rule == found.rule and set(f.nodes) & set(found.nodes)), None)
        if same is None:
            findings.append(found)
        else:
            same.message = f"{same.message.rstrip('.')}. Confirmed by onnxruntime: {found.message}"


def diagnose_path(path: Path, rules, rule_options: RuleOptions, probe_options=None) -> ModelReport:
    """Like diagnose_loaded, turning a model that cannot be loaded into a report with its error."""
    try:
        loaded = load_model(path, unexpanded=True)
    except GraphfixError as exc:
        return ModelReport(str(path), error=str(exc), exit_code=exc.exit_code)
    return diagnose_loaded(loaded, rules, rule_options, probe_options)


def diagnose(model_or_path, *, only=(), skip=(), static: bool = False, expect_outputs=(), trace_shapes=None,
             validation=None) -> list[Finding]:
    """Findings for a model (path or ModelProto). Raises GraphfixError for inputs it cannot read."""
    loaded = load(model_or_path, unexpanded=True)
    options = RuleOptions(static=static, expect_outputs=tuple(expect_outputs), trace_shapes=trace_shapes or {})
    probe_options = None if static else (validation or _default_validation())
    return diagnose_loaded(loaded, select_rules(tuple(only), tuple(skip)), options, probe_options).findings


def repair(model_or_path, *, output: str | Path | None = None, only=(), skip=(), unsafe_fixes: bool = False,
           simplify: bool = True, validate: bool = True, force: bool = False, in_place: bool = False,
           expect_outputs=(), trace_shapes=None, validation=None) -> RepairResult:
    """Repair a model; writes `output` only when validated (or forced). `result.model` is the repaired proto."""
    from graphfix.pipeline.repair import RepairOptions, repair_model

    loaded = load(model_or_path)
    options = RepairOptions(
        rules=select_rules(tuple(only), tuple(skip)),
        rule_options=RuleOptions(unsafe_fixes=unsafe_fixes, expect_outputs=tuple(expect_outputs),
                                 trace_shapes=trace_shapes or {}),
        simplify=simplify, validate=validate, force=force, in_place=in_place, validation=validation,
    )
    return repair_model(loaded, Path(output) if output is not None else None, options)


def verify(onnx_path, torch_module, example_args, probe_args=None, **options):
    """Compare an ONNX file with its PyTorch module at the example and probe inputs."""
    from graphfix.exporting.verify import verify as _verify

    return _verify(onnx_path, torch_module, example_args, probe_args=probe_args, **options)


def _default_validation():
    from graphfix.validate import ValidationOptions

    return ValidationOptions()
