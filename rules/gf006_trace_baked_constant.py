"""GF006 trace-baked-constant."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from graphfix.analysis.broadcast import BROADCAST_OPS
from graphfix.analysis.constants import arange_axis
from graphfix.analysis.edits import arange_input, loosened, set_constant
from graphfix.analysis.export_sizes import folded_ranges
from graphfix.analysis.sizes import caps, sizes_of
from graphfix.core.context import RuleContext
from graphfix.core.rule import Finding, Fix, Rejection, Rule, Safety, Severity, known


class TraceBakedConstant(Rule):
    """Tables, masks and position ranges built with a Python int while tracing, folded to export-size constants.

    ## What it does
    Finds constant tensors whose extent along an axis is the export-time size of a dynamic dim they meet: a
    constant operand of an elementwise op cut at the export length (`torch.ones(int(T))`, `torch.arange(int(T))`,
    `self.pe[:, :int(T)]`), and position ranges folded at the export length that cap how long an input may be
    (transformers FunnelModel's relative positions `arange(L, -L, -1)`, found from the size analysis' `Min(N, T)`
    constraints).

    ## Why it breaks deployment
    The tracer runs the Python that builds such tensors once, at the export size, and stores the result. At any
    other size onnxruntime fails (`Attempting to broadcast an axis by a dimension other than 1`), or, where the
    constant is sliced or gathered with a traced size, returns values computed for the wrong length.

    ## Example
    ```python
    return x + torch.arange(int(x.shape[1]))   # baked: Add(x, [0, 1, ..., 6]); write torch.arange(x.shape[1])
    ```
    Repaired: a constant uniform along the baked axis shrinks to size 1 (broadcasting restores it); a constant
    0, 1, 2, ... along it becomes `Range(0, Shape(x)[i])`.

    ## Fix safety
    Safe: both repairs give the same values at the export size and follow the dim at every other size. Not
    fixable, with the PyTorch change: a table cut at the export length (its other rows are gone from the graph)
    and folded position ranges.
    """

    code = "GF006"
    name = "trace-baked-constant"
    severity = Severity.ERROR
    fixable = True
    traced_values = True
    knowledge = (
        known(r"TracerWarning: Converting a tensor to a Python (integer|boolean|float|index)",
              "Export warning: a value will be baked into the graph as a constant",
              "The traced code turned a tensor into a Python number (int(), float(), bool(), .item(), an `if` on a "
              "tensor); the exporter records the export-time value as a constant.",
              "Keep the value a tensor at the source line the warning names; `graphfix.export()` links each warning "
              "to the graph finding it causes."),
    )

    def detect(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        yield from self._length_caps(ctx)
        for node in ctx.graph.nodes:
            if node.op in BROADCAST_OPS:
                yield from self._broadcast_constant(ctx, node)

    # --- a length capped by positions folded at export (FunnelModel's relative positions) ------------------------
    def _length_caps(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        ranges = folded_ranges(ctx)
        if not ranges:
            return  # the analysis is only paid for on graphs that hold a folded arange
        for cap in caps(sizes_of(ctx)):
            node, sym, limit = cap.constraint.node, cap.symbol, cap.limit
            source = next((r for r in ranges if r.length in (limit, limit + 1)), None)
            if source is None:
                yield self.reject(f"{sym} <= {limit} at '{node.name}', but no folded arange of that length",
                                  nodes=[node])
                continue
            value = source.export_length
            baked = f"export-time length {sym}={value}" if value else f"{source.length} positions"
            yield self.finding(
                f"{node.op} '{node.name}' runs only while {sym} <= {limit} (it needs {cap.constraint.left} = "
                f"{cap.constraint.right}): constant '{source.tensor.name}' is {source.show()}, positions computed "
                f"for the {baked} and folded into the graph; longer inputs fail in onnxruntime and other lengths "
                "get positions of the wrong length", nodes=[node], tensors=[source.tensor],
                hint="Positions were built with Python ints (`len(pos)`, `int(seq_len)`, `x.size(1)` through "
                     "`range`): build them with torch.arange on traced sizes, or export with dynamo=True.")

    # --- constant operands cut at an export-time size -----------------------------------------------------------
    def _broadcast_constant(self, ctx, node) -> Iterator[Finding | Rejection]:
        shapes = [ctx.shape(t) for t in node.inputs]
        for k, const in enumerate(node.inputs):
            value = ctx.constant_value(const)
            if value is None or value.ndim == 0:
                continue
            for other, oshape in zip(node.inputs, shapes, strict=True):
                if other is const or oshape is None:
                    continue
                axes = [(a, oshape[len(oshape) - value.ndim + a]) for a in range(value.ndim)
                        if len(oshape) - value.ndim + a >= 0 and value.shape[a] > 1
                        and isinstance(oshape[len(oshape) - value.ndim + a], str)]
                if axes:
                    yield self._baked_constant(ctx, node, k, const, value, other, oshape, axes)
                    break

    def _baked_constant(self, ctx, node, k, const, value, other, oshape, axes) -> Finding:
        dims = ", ".join(f"axis {a} has {value.shape[a]} where {other.name} has {d}" for a, d in axes)
        base = (f"{node.op} '{node.name}' combines {other.name} {oshape} with constant {const.name} "
                f"{list(value.shape)} cut at export-time sizes ({dims}): onnxruntime fails at other sizes")
        uniform = all(np.all(value == value.take([0], axis=a)) for a, _ in axes)
        if uniform:
            small = value[tuple(slice(0, 1) if a in {a for a, _ in axes} else slice(None) for a in
                                range(value.ndim))]
            return self.finding(
                base + "; its values do not vary along those axes", nodes=[node], tensors=[const, other],
                shapes={const.name: list(value.shape), other.name: oshape},
                hint="`torch.zeros(int(x.shape[1]))`-style constants: use `x.new_zeros(...)`/broadcast a scalar.",
                fix=Fix(f"shrink {const.name} to {list(small.shape)} (broadcasting restores the size)",
                        apply=loosened(node, {value.shape[a] for a, _ in axes}, set_constant(node, k, small)),
                        safety=Safety.SAFE,
                        reason="the constant is uniform along the baked axes, so a size-1 dim broadcasts to it"))
        arange = arange_axis(value, [a for a, _ in axes])
        if arange is not None and arange[0] == 0 and arange[1] == 1:
            axis = arange[2]
            source = len(oshape) - value.ndim + axis
            return self.finding(
                base + f"; it is arange({value.shape[axis]}) along axis {axis}", nodes=[node],
                tensors=[const, other], shapes={const.name: list(value.shape), other.name: oshape},
                hint="`torch.arange(int(x.shape[1]))` was folded; write `torch.arange(x.shape[1])`.",
                fix=Fix(f"compute {const.name} as Range(0, Shape({other.name})[{source}])",
                        apply=loosened(node, {value.shape[axis]}, arange_input(node, k, value, axis, other, source,
                                                                           ctx.opset)),
                        safety=Safety.SAFE,
                        reason="the constant is 0, 1, 2, ... along the dynamic axis: Range gives the same values"))
        return self.finding(
            base + "; its values beyond the export length are gone from the graph", nodes=[node],
            tensors=[const, other], shapes={const.name: list(value.shape), other.name: oshape},
            hint="A buffer was cut with a Python int (`self.pe[:, :int(T)]`) and folded; slice it with the traced "
                 "size (`self.pe[:, : x.shape[1]]`) and re-export.")

