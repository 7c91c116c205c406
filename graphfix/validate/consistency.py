"""Batch consistency: where the original fails, what it gives for each sample is still a reference.

A batch of k samples run through the repaired model must give, sample by sample, what the original gives for
those samples run a group at a time: at the export batch size, and at batch 1 (a key-padding mask, a reshape
that folds the batch are right there). A group the batch does not fill is completed with copies of its first
sample, whose outputs are then dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from graphfix.validate.compare import OutputComparison, compare_arrays, evaluate_dim
from graphfix.validate.sizes import dim_names, graph_inputs


@dataclass
class BatchReference:
    group: int  # samples per run of the original
    outputs: dict[str, np.ndarray] | None  # concatenated per-sample outputs, None when unavailable
    why_not: str = ""


def batch_axes(model: onnx.ModelProto, batch: str) -> dict[str, int]:
    """Input name -> axis carrying the symbolic dim `batch`."""
    axes = {}
    for vi in graph_inputs(model):
        names = dim_names(vi)
        if batch in names:
            axes[vi.name] = names.index(batch)
    return axes


def output_batch_axes(model: onnx.ModelProto, batch: str) -> dict[str, int]:
    """Output name -> axis the model declares as `batch` (absent when it declares none)."""
    axes = {}
    for out in model.graph.output:
        dims = [d.dim_param for d in out.type.tensor_type.shape.dim]
        if batch in dims:
            axes[out.name] = dims.index(batch)
    return axes


def reference(original, feeds: dict[str, np.ndarray], binding: dict[str, int], batch: str, group: int,
              declared: dict[str, list]) -> BatchReference:
    """The original's outputs for the samples of `feeds`, `group` samples per run, concatenated along the batch."""
    axes = batch_axes(original.proto, batch)
    out_axes = output_batch_axes(original.proto, batch)
    size = binding[batch]
    pieces: dict[str, list[np.ndarray]] = {}
    for start in range(0, size, group):
        taken = list(range(start, min(start + group, size)))
        index = taken + [taken[0]] * (group - len(taken))
        part = {name: np.take(value, index, axis=axes[name]) if name in axes else value
                for name, value in feeds.items()}
        result = original.run(part)
        if not result.ok:
            return BatchReference(group, None, f"at {batch}={group} it fails")
        wrong = contradicts(result.outputs, declared, {**binding, batch: group})
        if wrong:
            return BatchReference(group, None, f"at {batch}={group} it {wrong}")
        for name, value in result.outputs.items():
            axis = out_axes.get(name, _guess_axis(value, group))
            if axis is None:
                continue
            pieces.setdefault(name, []).append(np.take(value, range(len(taken)), axis=axis))
    outputs = {name: np.concatenate(parts, axis=out_axes.get(name, _guess_axis(parts[0], None) or 0))
               for name, parts in pieces.items()}
    return BatchReference(group, outputs)


def compare_with_reference(ref: BatchReference, actual: dict[str, np.ndarray], rtol: float,
                           atol: float) -> list[OutputComparison]:
    return [compare_arrays(name, value, actual[name], rtol, atol) if name in actual
            else OutputComparison(name, False, None, None, list(np.shape(value)), [], "output missing")
            for name, value in ref.outputs.items()]


def _guess_axis(value: np.ndarray, group: int | None) -> int | None:
    """Without a declaration, the batch is the leading axis when its size is the group's."""
    if np.ndim(value) == 0:
        return None
    return 0 if group is None or np.shape(value)[0] == group else None


def contradicts(outputs: dict[str, np.ndarray], declared: dict[str, list], binding: dict[str, int]) -> str:
    """'returns output X with shape S where it declares D', or '' when every output agrees with its declaration."""
    for name, value in outputs.items():
        dims = declared.get(name)
        if dims is None:
            continue
        shape = list(np.shape(value))
        expected = [evaluate_dim(d, binding) for d in dims]
        if len(expected) != len(shape) or any(e is not None and e != s for e, s in zip(expected, shape, strict=False)):
            return f"returns output '{name}' with shape {shape} where it declares {dims}"
    return ""
