"""Proving a repaired model: run it against the original at several sizes and explain any difference.

    validation = validate(original, candidate, ValidationOptions())
    if not validation.passed:
        print(*validation.reasons, sep="\\n")

Where the original runs, the candidate's outputs must match within rtol/atol. Where the original fails (the
bug being repaired), the candidate must run and its output shapes must agree with symbolic shape inference.
When both run but disagree, the first diverging node is found by exposing shared intermediate tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphfix.analysis.sizes import bind, tied_dims
from graphfix.validate.anchor import anchored
from graphfix.validate.bisect import first_divergence
from graphfix.validate.compare import OutputComparison, ShapeOracle, compare_outputs
from graphfix.validate.inputs import ValidationOptions, probe_sizes, synthesize_inputs
from graphfix.validate.probe import RuntimeFailure, probe
from graphfix.validate.runner import ModelRunner, ModelSource, failing_node

__all__ = [
    "ModelSource",
    "RuntimeFailure",
    "SizeRun",
    "Validation",
    "ValidationOptions",
    "probe",
    "probe_sizes",
    "synthesize_inputs",
    "validate",
]


@dataclass
class SizeRun:
    """What happened at one binding of the symbolic dims."""

    sizes: dict[str, int]
    original_error: str | None
    candidate_error: str | None
    outputs: list[OutputComparison] = field(default_factory=list)  # when both ran
    candidate_shapes: dict[str, list[int]] = field(default_factory=dict)
    shape_problems: list[str] = field(default_factory=list)  # when only the candidate ran
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "sizes": dict(self.sizes),
            "original": {"ok": self.original_error is None, "error": self.original_error},
            "candidate": {"ok": self.candidate_error is None, "error": self.candidate_error},
            "outputs": [o.to_json() for o in self.outputs],
            "candidate_shapes": self.candidate_shapes,
            "shape_problems": list(self.shape_problems),
            "note": self.note,
        }


@dataclass
class Validation:
    passed: bool
    sizes: list[dict[str, int]]
    runs: list[SizeRun]
    reasons: list[str]  # one line each, why it failed ([] when passed)
    divergence: dict | None = None  # first diverging node when outputs disagree

    def to_json(self) -> dict[str, Any]:
        return _plain(
            {
                "passed": self.passed,
                "sizes": [dict(s) for s in self.sizes],
                "runs": [r.to_json() for r in self.runs],
                "reasons": list(self.reasons),
                "divergence": self.divergence,
            }
        )


def validate(original: ModelSource | ModelRunner, candidate: ModelSource | ModelRunner,
             options: ValidationOptions) -> Validation:
    """Run both models at every probe size and decide whether the candidate may replace the original."""
    before = ModelRunner.from_source(original)
    after = before if candidate is original else ModelRunner.from_source(candidate)
    if after.session is None:
        return Validation(False, [], [], [f"the repaired model cannot be loaded by onnxruntime: {after.load_error}"])
    options = anchored([before, after], before.proto, options)
    sizes = probe_sizes(before.proto, options)
    tied = tied_dims(after.proto)  # a mask's length computed from the audio's: feed consistent sizes
    sizes = [bind(binding, tied) for binding in sizes] if tied else sizes
    oracle = ShapeOracle(after.proto)
    runs, reasons, divergence = [], [], None
    for index, binding in enumerate(sizes):
        feeds = _feeds(before, after, binding, options)
        run = _run_both(before, after, feeds, binding, oracle, options, at_export_size=index == 0)
        runs.append(run)
        reasons.extend(_reasons(run, "the model" if after is before else "repaired model"))
        if divergence is None and any(not o.ok for o in run.outputs):
            divergence = first_divergence(before, after, feeds, options.rtol, options.atol)
            if divergence and divergence.get("tensor"):
                reasons.append(
                    f"first diverging node: '{divergence['node']}' ({divergence['op_type']}), "
                    f"tensor '{divergence['tensor']}': {divergence['problem']}"
                )
    return Validation(not reasons, sizes, runs, reasons, divergence)


def _feeds(before: ModelRunner, after: ModelRunner, binding, options) -> dict[str, np.ndarray]:
    """Inputs for both models: the original's, plus any input only the candidate declares."""
    feeds = synthesize_inputs(after.proto, binding, options)
    feeds.update(synthesize_inputs(before.proto, binding, options))
    return feeds


def _run_both(before, after, feeds, binding, oracle: ShapeOracle, options, at_export_size: bool) -> SizeRun:
    expected, actual = before.run(feeds), after.run(feeds)
    run = SizeRun(binding, expected.error, actual.error)
    if not actual.ok:
        return run
    run.candidate_shapes = {k: list(np.shape(v)) for k, v in actual.outputs.items()}
    if expected.ok:
        run.outputs = compare_outputs(expected.outputs, actual.outputs, options.rtol, options.atol)
    if expected.ok and not at_export_size and _only_shapes_differ(run.outputs):
        # Away from the export size an original with baked sizes runs but returns the export-time shape (the
        # silent half of the bug being repaired): the candidate is then held to symbolic shape inference.
        run.note = "the original returns export-time shapes here; the repaired model's shapes were checked against " \
                   "symbolic shape inference"
        run.outputs = [o for o in run.outputs if o.ok or o.max_abs is not None]
        run.shape_problems = oracle.mismatches(actual.outputs, binding)
    elif not expected.ok:
        run.shape_problems = oracle.mismatches(actual.outputs, binding)
    return run


def _only_shapes_differ(outputs: list[OutputComparison]) -> bool:
    """Some outputs differ in shape, and none differs in value at an equal shape."""
    mismatched = [o for o in outputs if not o.ok]
    return bool(mismatched) and all(o.expected_shape != o.actual_shape for o in mismatched)


def _reasons(run: SizeRun, subject: str) -> list[str]:
    at = f"at sizes {run.sizes}"
    if run.candidate_error is not None:
        where = failing_node(run.candidate_error)
        node = f"node '{where[1]}' ({where[0]})" if where else "the model"
        return [f"{subject} fails {at}: {node}: {run.candidate_error}"]
    lines = [f"output '{o.name}' differs from the original {at}: {o.problem}" for o in run.outputs if not o.ok]
    lines += [f"{problem} {at}" for problem in run.shape_problems]
    return lines


def _plain(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python numbers, inf/nan to strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value
