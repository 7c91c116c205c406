"""Deployment surgery: cut, freeze, reshape, stream and benchmark exported models.

    from graphfix.surgery.extract import extract        # the subgraph between named tensors
    from graphfix.surgery.freeze import freeze          # an input replaced by a constant fill, then folded
    from graphfix.surgery.set_shape import set_shape    # input dims fixed or freed, shapes inferred again
    from graphfix.surgery.stream import stream          # N streaming steps with caches fed back
    from graphfix.surgery.bench import bench            # latency, throughput and RTF per configuration

The commands that write (extract, freeze, set-shape) follow `repair`: the result is staged beside its
destination, onnxruntime checks the staged file, and only a checked model is moved into place. This module holds
what they share: the result record, the staging step and the output comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphfix.io.loading import LoadedModel
from graphfix.io.saving import protect_inputs, stage_model
from graphfix.io.targets import check_destination
from graphfix.validate.compare import compare_outputs


@dataclass
class SurgeryResult:
    """What one writing command did: where it wrote, what it checked at which sizes, and why it refused."""

    path: str
    output: str | None
    status: str  # written | failed | checked (dry run)
    summary: str = ""  # one line: what changed
    checks: list[dict[str, Any]] = field(default_factory=list)  # one per size: {"sizes", "ok", "problems"}
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    model: onnx.ModelProto | None = None

    @property
    def passed(self) -> bool:
        return self.status in ("written", "checked")

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "output": self.output, "status": self.status, "summary": self.summary,
                "checks": self.checks, "notes": self.notes, "error": self.error}


Check = Callable[[Path], tuple[list[dict[str, Any]], list[str]]]  # staged path -> (checks, reasons)


def write_checked(proto: onnx.ModelProto, output: Path | None, loaded: LoadedModel, summary: str,
                  check: Check, scratch: Path | None = None) -> SurgeryResult:
    """Stage `proto` beside `output`, run `check` on the staged file, and commit only when it passed.

    Without `output` (dry run) the model is staged in `scratch` and checked, never written."""
    if output is not None:
        check_destination(loaded, output, in_place=None)  # no surgery command replaces its input
    destination = output if output is not None else Path(scratch) / "model.onnx"
    result = SurgeryResult(loaded.name, None, "failed", summary, model=proto)
    staged = protect_inputs(stage_model(proto, destination, loaded.base_dir), loaded)
    try:
        result.checks, reasons = check(staged.path)
        if reasons:
            result.error = "check failed: " + "; ".join(reasons[:5]) + (" ..." if len(reasons) > 5 else "")
            return result
        if output is None:
            result.status = "checked"
        else:
            result.output = str(staged.commit())
            result.notes.extend(staged.kept)
            result.status = "written"
    finally:
        staged.discard()
    return result


def output_problems(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], rtol: float,
                    atol: float) -> list[str]:
    """One line per output of `expected` that `actual` lacks or that differs beyond the tolerances."""
    return [f"output '{c.name}' {c.problem}" for c in compare_outputs(expected, actual, rtol, atol) if not c.ok]


def non_finite(outputs: dict[str, np.ndarray]) -> list[str]:
    return [f"output '{name}' has NaN or Inf values" for name, value in outputs.items()
            if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.isfinite(value).all()]
