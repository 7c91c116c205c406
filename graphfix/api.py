"""The Python API: `diagnose` and `repair` on a path or a ModelProto (`graphfix.verify` is the PyTorch side's,
`graphfix.exporting.verify`).

A thin facade: the work is done in `graphfix.pipeline` (diagnose.py, repair.py), which the CLI commands share.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from graphfix.core.registry import select_rules
from graphfix.core.rule import Finding, RuleOptions
from graphfix.io.loading import LoadedModel, from_proto, load_model
from graphfix.pipeline.diagnose import (
    ModelReport,
    budget_finding,
    diagnose_loaded,
    diagnose_path,
    merge_runtime_findings,
    without_functions,
)

if TYPE_CHECKING:  # the repair pipeline imports onnxruntime and the proof: not for `diagnose --static`
    from graphfix.pipeline.repair import RepairResult

__all__ = [
    "ModelReport",
    "RepairResult",
    "budget_finding",
    "diagnose",
    "diagnose_loaded",
    "diagnose_path",
    "load",
    "merge_runtime_findings",
    "repair",
    "without_functions",
]


def load(model_or_path: str | Path | onnx.ModelProto, base_dir: Path | None = None, *,
         unexpanded: bool = False) -> LoadedModel:
    if isinstance(model_or_path, onnx.ModelProto):
        return from_proto(model_or_path, base_dir, unexpanded=unexpanded)
    return load_model(model_or_path, unexpanded=unexpanded)


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


def __getattr__(name: str):
    """`graphfix.api.RepairResult`, imported when asked for, not when graphfix starts."""
    if name == "RepairResult":
        from graphfix.pipeline.repair import RepairResult

        return RepairResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _default_validation():
    from graphfix.validate import ValidationOptions

    return ValidationOptions()
