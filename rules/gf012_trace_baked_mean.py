"""GF012 trace-baked-mean."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.context import RuleContext
from graphfix.analysis.export_sizes import export_sizes
from graphfix.analysis.sizes.ops import is_table
from graphfix.core.rule import Finding, Rejection, Rule, Severity

LAYOUT = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Identity"})  # keep a sum a sum
SUMS = frozenset({"ReduceSum"})
HINT = ("Keep the length a tensor while tracing: `h.mean(1)`, or `h.sum(1) / h.shape[1]` (not `int(h.shape[1])` or "
        "`float(T)`), or divide by the lengths of a padded batch; then re-export. If the number is the model's own "
        "constant, the warning can be left (`--skip GF012`).")


class TraceBakedMean(Rule):
    """A sum over an axis whose length varies, divided by a whole number: a mean whose length was baked.

    ## What it does
    Finds a Div by a one-element constant that is a whole number from 3 on (or a Mul by its inverse) whose other
    operand is a ReduceSum (through reshapes, squeezes, transposes and casts) over an axis the graph leaves
    dynamic: `h.sum(1) / int(h.shape[1])` traced at 399 frames divides by 399.0 at every length (helper 119:
    transformers' Wav2Vec2 then that mean, 50 % off at other lengths, with no finding). The shapes are onnx's,
    and onnxruntime's symbolic inference where onnx leaves a dim unknown. A sum of counts (an integer ReduceSum: a
    mask's frames cast and divided by a hop, transformers' VibeVoice) is none. A warning: the number may be the
    model's own (sum pooling scaled by 1/8, `/ 4`, helper 123), which the graph does not tell from a length; an
    error where the graph or `--trace-shape` says the axis was that long at export.

    ## Why it breaks deployment
    The model runs at every length and returns values scaled for the export length: nothing fails, and `repair`
    compares the model with itself. A number baked beside a fix (a Reshape GF004 rebuilds) is read by the fix's
    echo check instead, which makes the fix unsafe.

    ## Example
    ```python
    return h.sum(1) / int(h.shape[1])   # traced at T = 399: Div(ReduceSum(h, 1), 399.0)
    return h.mean(1)                     # a ReduceMean, right at every length
    ```

    ## Fix safety
    Not repaired: whether the number is the length at export or the model's own is not in the graph. `repair`
    writes nothing while an error is left (the axis' export length known, exit 1); past a warning it writes the
    model as it came, the warning shown.
    """

    code = "GF012"
    name = "trace-baked-mean"
    severity = Severity.WARNING

    def detect(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        for node in ctx.graph.nodes:
            if node.op not in ("Div", "Mul") or len(node.inputs) != 2:
                continue
            divisor = _whole(ctx, node)
            if divisor is None:
                continue
            data = node.inputs[0] if is_table(node.inputs[1]) else node.inputs[1]
            summed = _sum_above(data)
            if summed is None:
                continue
            axes = _dynamic_axes(ctx, summed)
            if not axes:
                yield self.reject(f"{node.op} '{node.name}' scales ReduceSum '{summed.name}' by a whole number, "
                                  "over static axes only, or over counts", nodes=[node.name])
                continue
            (axis, dim), exported = axes[0], export_sizes(ctx, ctx.evaluator)
            baked = exported.values.get(dim) == divisor
            yield self.finding(
                f"{node.op} '{node.name}' divides the sum '{summed.name}' over axis {axis}, whose length the graph "
                f"leaves dynamic ({dim}), by {divisor}: "
                + (f"{dim} was {divisor} at export ({exported.explain(dim)}), so the mean's length was baked while "
                   "tracing (`h.sum(1) / int(h.shape[1])`): wrong at every other length" if baked else
                   f"a mean whose length was baked while tracing (`h.sum(1) / int(h.shape[1])` at {divisor}) reads "
                   "the same, and is wrong at every other length"),
                nodes=[node.name, summed.name], tensors=[data.name], hint=HINT,
                severity=Severity.ERROR if baked else Severity.WARNING)


def _whole(ctx: RuleContext, node: gs.Node) -> int | None:
    """The whole number from 3 on that the node divides by (a Div's divisor, or a Mul's factor's inverse)."""
    const = node.inputs[1] if node.op == "Div" else next((t for t in node.inputs if is_table(t)), None)
    value = ctx.constant_value(const) if const is not None and is_table(const) else None
    if value is None or value.size != 1 or value.dtype.kind != "f":
        return None
    number = float(value.reshape(-1)[0])
    if not math.isfinite(number) or number == 0:
        return None
    divisor = number if node.op == "Div" else 1 / number
    whole = round(divisor)
    tolerance = 1e-3 if value.dtype.itemsize == 2 else 1e-6
    return whole if whole >= 3 and math.isclose(divisor, whole, rel_tol=tolerance) else None


def _sum_above(tensor: gs.Tensor) -> gs.Node | None:
    """The ReduceSum the tensor is, through layout ops."""
    for _ in range(8):
        producer = tensor.inputs[0] if tensor.inputs else None
        if producer is None:
            return None
        if producer.op in SUMS:
            return producer
        if producer.op not in LAYOUT or not producer.inputs:
            return None
        tensor = producer.inputs[0]
    return None


def _dynamic_axes(ctx: RuleContext, summed: gs.Node) -> list[tuple[int, str]]:
    """(axis, name) of the dynamic dims the ReduceSum sums over (onnx's shapes, filled from onnxruntime's symbolic
    inference where onnx leaves one unknown); none where it sums over static axes, or over every axis."""
    data = summed.inputs[0]
    if data.dtype is not None and np.dtype(data.dtype).kind in "iub":
        return []  # a sum of counts (a mask's frames), which a hop or a stride divides
    dims = ctx.shape_filled(data)
    if dims is None:
        return []
    axes = summed.attrs.get("axes")
    if axes is None and len(summed.inputs) > 1:
        value = ctx.constant_value(summed.inputs[1])
        axes = None if value is None else [int(a) for a in value.reshape(-1)]
    if axes is None:
        return []  # every axis, or axes computed at run time: not a mean over one
    return [(a % len(dims), dims[a]) for a in axes if -len(dims) <= a < len(dims) and isinstance(dims[a], str)
            and dims[a]]
