"""GF014 trace-baked-positions."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.constants import arange_axis
from graphfix.analysis.context import RuleContext
from graphfix.analysis.edits import arange_input, loosened
from graphfix.analysis.export_sizes import export_sizes
from graphfix.analysis.pinned import pinned_operands, widening_constants
from graphfix.analysis.sizes.ops import is_table
from graphfix.core.rule import Finding, Fix, Rejection, Rule, Safety, Severity

COMPARISONS = frozenset({"Less", "LessOrEqual", "Greater", "GreaterOrEqual"})
HINT = ("Build the positions from the traced size (`torch.arange(x.shape[1])`, not `int(x.shape[1])` or "
        "`lengths.max().item()`), or pass `max_len=x.shape[1]` to the mask helper; then re-export.")


class TraceBakedPositions(Rule):
    """Positions as long as an input was at export, compared with values: a mask whose width was baked.

    ## What it does
    Finds a constant 0, 1, ..., N-1 along one axis (N from 3 on) compared (`<`, `<=`, `>`, `>=`) with a tensor
    computed at run time, where N is the export size of a dynamic dim of a graph input that `--trace-shape` gives
    or the graph solves, and no other such dim had that size. `torch.arange(int(wav.shape[1]))[None] <
    lengths[:, None]` traced at 1600 samples folds the positions into a constant of 1600 (helper 129: a mask given
    to transformers' Wav2Vec2, which only sums it). A width that a size meets further on (the mask multiplies the
    frames) is GF006's (`pinned`), which the graph pins; this one meets none.

    ## Why it breaks deployment
    Nothing fails: the mask keeps 1600 positions at every length. Past the export length every length is capped at
    1600 and the samples after it are masked out (5.1 off at 3200 samples in helper 129's Wav2Vec2); shorter
    inputs get a mask wider than the audio. `repair` compares the model with itself and finds nothing.

    ## Example
    ```python
    mask = torch.arange(int(wav.shape[1]))[None] < lengths[:, None]   # traced at 1600: a constant [1, 1600]
    mask = torch.arange(wav.shape[1])[None] < lengths[:, None]        # Range(0, Shape(wav)[1]) at run time
    ```

    ## Fix safety
    Unsafe: compute the positions as Range(0, Shape(input)[axis]). The positions may be the model's own (a
    fixed maximum length that the export happened to equal), or a clamped or spaced sequence that starts so; the
    graph does not say which (helper 130: a model's own thresholds `score > arange(16)`, a pad to its own 32
    positions exported at 32): a warning, and `repair` writes the model as it came, the warning shown.
    Applied, the original is no reference where the dim is not its export size (it keeps the export's positions
    there): the proof compares the two there only at the export size.
    """

    code = "GF014"
    name = "trace-baked-positions"
    severity = Severity.WARNING
    fixable = True

    def detect(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        candidates = [found for node in ctx.graph.nodes if node.op in COMPARISONS and len(node.inputs) == 2
                      for found in _positions_read(ctx, node)]
        if not candidates:
            return
        sizes = export_sizes(ctx, ctx.evaluator)
        pinned: set[int] | None = None
        for node, index, value, axis in candidates:
            const, width = node.inputs[index], value.shape[axis]
            dims = [d for d in sizes.symbols_with(width) if d in sizes.carriers and sizes.from_the_graph(d)]
            if len(dims) > 1:
                yield self.reject(f"'{const.name}' holds positions 0 to {width - 1}, and {', '.join(dims)} each "
                                  f"had {width} at export: which one the width was, the graph does not say",
                                  nodes=[node.name])
            if len(dims) != 1:
                continue
            if pinned is None:  # GF006's: a width a size meets further on
                pinned = {id(p.const) for p in pinned_operands(ctx) if not isinstance(p, str)} \
                    if widening_constants(ctx) else set()
            if id(const) in pinned:
                continue
            dim, (carrier, carrier_axis) = dims[0], sizes.carriers[dims[0]]
            other = node.inputs[1 - index]
            yield self.finding(
                f"{node.op} '{node.name}' compares '{other.name}' with the constant positions 0 to {width - 1} "
                f"('{const.name}' {list(value.shape)}), as many as {sizes.explain(dim)}: positions built with a "
                f"Python int of the size (`torch.arange(int(x.shape[{carrier_axis}]))`), so the mask keeps {width} "
                f"positions at every {dim}: past {width} every length is capped, and nothing fails",
                nodes=[node.name], tensors=[const, other], shapes={const.name: list(value.shape)}, hint=HINT,
                fix=Fix(f"compute '{const.name}' as Range(0, Shape({carrier.name})[{carrier_axis}])",
                        apply=loosened(node, {width}, arange_input(node, index, value, axis, carrier, carrier_axis,
                                                                   ctx.opset)),
                        safety=Safety.UNSAFE, moves=frozenset({dim}),
                        reason=f"the positions are arange({dim}) (applied, the simplest), or the model's own "
                               f"{width} (a maximum length the export equalled), or another sequence that starts "
                               "0, 1, 2: the graph does not say which"))


def _positions_read(ctx: RuleContext, node: gs.Node) -> Iterator[tuple[gs.Node, int, np.ndarray, int]]:
    """(node, input index, value, axis) of a constant input that holds 0, 1, ..., N-1 (N >= 3) along one axis, size
    1 elsewhere, compared with an input computed at run time."""
    for index, tensor in enumerate(node.inputs):
        other = node.inputs[1 - index]
        value = ctx.constant_value(tensor) if is_table(tensor) and not is_table(other) else None
        if value is None or value.size < 3 or value.dtype.kind not in "iuf":
            continue
        axes = [axis for axis, extent in enumerate(value.shape) if extent > 1]
        found = arange_axis(value, axes)
        if found is not None and found[:2] == (0.0, 1.0):
            yield node, index, value, found[2]
