"""Batch consistency: where the original fails, what it gives for each sample is still a reference.

A batch of k samples run through the repaired model must give, sample by sample, what the original gives for
those samples run a group at a time: at the export batch size, and at batch 1 (a key-padding mask, a reshape
that folds the batch are right there). A group the batch does not fill is completed with copies of its first
sample, whose outputs are then dropped.

That reference holds only for a dim along which the original computes each sample on its own. A leading dim is
not always one (a sequence-first `[time, batch, d]` attention input leads with time), so each candidate dim is
first tried on the original itself, at its export size: a batch made of copies of one sample must give, for that
sample, what the mixed batch gives, and the samples in reverse order must give the outputs in reverse order. The
same trial finds the axis that carries the dim in each output. A dim the trial shows dependent gives no
reference, and neither does one it cannot try (the original fails there): independence is never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from graphfix.validate.compare import OutputComparison, compare_arrays, evaluate_dim
from graphfix.validate.graph_sizes import dim_names, graph_inputs

MIXED = "are not independent"  # in the reason: the original is shown to mix samples (not just left unshown)


@dataclass
class Samples:
    """A dim along which the original computes samples independently: its axis in each input, and in each output
    (None: an output the dim does not index, the same for every sample)."""

    dim: str
    inputs: dict[str, int]
    outputs: dict[str, int | None]


@dataclass
class BatchReference:
    group: int  # samples per run of the original
    outputs: dict[str, np.ndarray] | None  # concatenated per-sample outputs, None when unavailable
    why_not: str = ""
    feeds: dict[str, np.ndarray] | None = None  # the inputs of its first run of the original


def batch_axes(model: onnx.ModelProto, batch: str) -> dict[str, int]:
    """Input name -> axis carrying the symbolic dim `batch`."""
    axes = {}
    for vi in graph_inputs(model):
        names = dim_names(vi)
        if batch in names:
            axes[vi.name] = names.index(batch)
    return axes


def independent_samples(original, feeds: dict[str, np.ndarray], batch: str, rtol: float,
                        atol: float, where: str = "its export size", aliases=()) -> Samples | str:
    """`batch` with its axes when the original, at `feeds` (`where`, in words), gives each sample's outputs alone
    as it gives them in the batch (tried for the first and the last sample) and gives them permuted for permuted
    samples; else why not (it is not assumed where the original cannot be tried). `aliases`: the input dims the
    model ties equal to `batch` (`y + x` of `[By, T, D]` and `[B, T, D]`), whose samples move with its own: copies of
    x's sample alone beside y's own samples mixed them (helper 138)."""
    axes = batch_axes(original.proto, batch)
    for alias in aliases:
        axes = {**batch_axes(original.proto, alias), **axes}
    size = next((np.shape(feeds[name])[axis] for name, axis in axes.items() if name in feeds), 0)
    if size < 2:
        return f"samples along '{batch}' cannot be told apart at {batch}={size}: their independence is not shown"
    whole = original.run(feeds)
    if not whole.ok:
        return (f"the original fails at {where} with {batch}={size}: the independence of samples along "
                f"'{batch}' is not shown, so it is not assumed")
    alone = {}
    for sample in (0, size - 1):
        result = original.run(_take(feeds, axes, [sample] * size))
        if not result.ok:
            return f"the original fails on copies of one sample along '{batch}': their independence is not shown"
        alone[sample] = result.outputs
    outputs = {}
    for name, value in whole.outputs.items():
        axis = _sample_axis(value, {s: out[name] for s, out in alone.items()}, size, rtol, atol)
        if axis is False:
            return f"samples along '{batch}' {MIXED} in the original (output '{name}')"
        outputs[name] = axis
    if not _permutes(original, feeds, axes, whole.outputs, outputs, size, rtol, atol):
        return f"the original does not permute its outputs with the samples along '{batch}': they {MIXED}"
    return Samples(batch, axes, outputs)


def _permutes(original, feeds, axes, whole, outputs, size: int, rtol: float, atol: float) -> bool:
    """The samples in reverse order give each output's sample blocks in reverse order."""
    order = list(range(size))[::-1]
    result = original.run(_take(feeds, axes, order))
    if not result.ok:
        return False
    for name, value in whole.items():
        axis = outputs.get(name)
        expected = value if axis is None else np.concatenate([_block(value, axis, s, size) for s in order], axis=axis)
        if not compare_arrays(name, expected, result.outputs[name], rtol, atol).ok:
            return False
    return True


def _sample_axis(whole: np.ndarray, alone: dict[int, np.ndarray], size: int, rtol: float,
                 atol: float) -> int | bool | None:
    """The axis of `whole` whose s-th block (one sample's rows: the axis may fold the samples with another dim,
    as a `[N*T, d]` reshape does) equals the first block of the run on copies of sample s; None when no axis is
    indexed by the samples and every run gives the same; False when neither holds."""
    def same(a, b) -> bool:
        return compare_arrays("", a, b, rtol, atol).ok

    shape = np.shape(whole)
    axes = sorted((a for a in range(len(shape)) if shape[a] and shape[a] % size == 0), key=lambda a: shape[a])
    for axis in axes:
        if all(same(_block(whole, axis, s, size), _block(out, axis, 0, size)) for s, out in alone.items()):
            return axis
    return None if all(same(whole, out) for out in alone.values()) else False


def _block(value: np.ndarray, axis: int, sample: int, samples: int) -> np.ndarray:
    """The rows of `sample` along `axis`, which holds `samples` equal blocks."""
    rows = np.shape(value)[axis] // samples
    return np.take(value, range(sample * rows, (sample + 1) * rows), axis=axis)


def _take(feeds: dict[str, np.ndarray], axes: dict[str, int], index: list[int]) -> dict[str, np.ndarray]:
    return {name: np.take(value, index, axis=axes[name]) if name in axes else value for name, value in feeds.items()}


def reference(original, feeds: dict[str, np.ndarray], binding: dict[str, int], samples: Samples, group: int,
              declared: dict[str, list]) -> BatchReference:
    """The original's outputs for the samples of `feeds`, `group` samples per run, concatenated along the batch."""
    batch, size = samples.dim, binding[samples.dim]
    pieces: dict[str, list[np.ndarray]] = {}
    first = None
    for start in range(0, size, group):
        taken = list(range(start, min(start + group, size)))
        run_feeds = _take(feeds, samples.inputs, taken + [taken[0]] * (group - len(taken)))
        first = first or run_feeds
        result = original.run(run_feeds)
        if not result.ok:
            return BatchReference(group, None, f"at {batch}={group} it fails")
        wrong = contradicts(result.outputs, declared, {**binding, batch: group})
        if wrong:
            return BatchReference(group, None, f"at {batch}={group} it {wrong}")
        for name, value in result.outputs.items():
            axis = samples.outputs.get(name)
            if axis is not None and np.ndim(value) > axis and np.shape(value)[axis] % group == 0:
                rows = np.shape(value)[axis] // group
                pieces.setdefault(name, []).append(np.take(value, range(len(taken) * rows), axis=axis))
    outputs = {name: np.concatenate(parts, axis=samples.outputs[name]) for name, parts in pieces.items()}
    if not outputs:
        return BatchReference(group, None, f"at {batch}={group} no output has an axis of its samples")
    return BatchReference(group, outputs, feeds=first)


def compare_with_reference(ref: BatchReference, actual: dict[str, np.ndarray], rtol: float,
                           atol: float) -> list[OutputComparison]:
    return [compare_arrays(name, value, actual[name], rtol, atol) if name in actual
            else OutputComparison(name, False, None, None, list(np.shape(value)), [], "output missing")
            for name, value in ref.outputs.items()]


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
