"""GF010 trace-baked-broadcast."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from graphfix.analysis.context import RuleContext
from graphfix.analysis.export_sizes import sized_at_export, unknown_at_export
from graphfix.analysis.held_axes import (
    CONSTANT,
    CONSTANT_OF_SHAPE,
    EXPAND,
    RESIZE,
    TILE,
    Widening,
    could_hold,
    held_by,
    reads_inputs,
    size_family,
)
from graphfix.analysis.sizes import frozen_outputs, sizes_of
from graphfix.analysis.sizes.limits import FrozenOutput, made_up_dim
from graphfix.core.rule import Finding, Rejection, Rule, Severity

HINT = ("Build the size from the traced tensor (`x.new_ones(x.shape[1], 8)`, `h.expand(-1, x.shape[1], -1)`, "
        "without int()) and re-export; if the model keeps that length on purpose, declare the output axis static.")


class TraceBakedBroadcast(Rule):
    """Outputs declared dynamic that a broadcast holds at a size computed in Python while tracing.

    ## What it does
    Finds each output axis the exporter was told is dynamic (`dynamic_axes`) that the size analysis finds fixed, and
    walks it back (through elementwise ops, Transpose, Slice, Unsqueeze, Squeeze, a MatMul by a weight, a Conv that
    keeps a spatial size and the Expands that keep it; `graphfix.analysis.held_axes`) to the node that widens a
    length-1 axis to that size: a constant operand of a broadcasting op (`torch.ones(int(T), 8)` added to a pooled
    `[B, 1, 8]`), an entry of an Expand's shape (`h.expand(-1, int(T), -1)`), of ConstantOfShape's shape
    (`torch.zeros(B, int(T), 8)`), of Tile's repeats (`h.repeat(1, int(T), 1)`), or of a Resize's sizes
    (`F.interpolate(x, size=int(T))`, which takes any length to that size). Every way the size reaches the output
    must end in such a widening: one that holds it otherwise (the attention of 16 learned queries beside their
    `zeros_like`, a learned table of 16 rows added to the spread) explains it without a Python int. An error where
    that size is an input dim's export size as the graph tells it (a Reshape or broadcast elsewhere that holds only
    there, a strided front end's frame count that only it gives, or `--trace-shape`), or one step from it (`int(T) -
    1`, `+ 1`, `* 2`, `/ 2`), the widened tensor is computed from an input, and the constant is a size or a table
    built from one (uniform along the axis, or 0, 1, 2, ...); an error too where such a constant holds it and the
    export size of a length the inputs have (not a batch) is not known, so the constant may be it: the axis is held
    at every other size, or the model keeps that size and the declaration is wrong (mmsegmentation's `resize` to
    `(int(H), int(W))`, helper 103; `--trace-shape` tells which); a warning otherwise (learned slots spread to their
    number).

    ## Why it breaks deployment
    The model runs at every size and returns the export's length: PyTorch's output follows T, the graph's stays 40.
    Nothing fails, so no other check sees it, and after another rule repairs a Reshape baked with the same int(T)
    the proof has nothing to compare the longer sizes with (the original fails there).

    ## Example
    ```python
    t = int(x.shape[1])                                # 40 at export
    return h.mean(1, keepdim=True) + torch.ones(t, 8)  # [B, 40, 8] at every T; declared [B, "frames", 8]
    ```

    ## Fix safety
    Not repaired: the graph holds 40, and whether the module computed it from T (and how: T, T - 1, another input
    of the same length) or keeps 40 slots on purpose is not in it. A learned table of as many rows as T had (40
    query slots) leaves the same graph, which is why its constant must follow from its size for an error.
    """

    code = "GF010"
    name = "trace-baked-broadcast"
    severity = Severity.ERROR
    traced_values = True

    def detect(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        outputs = {t.name: t for t in ctx.graph.outputs}
        declared = {(t.name, axis) for t in outputs.values() for axis, d in enumerate(t.shape or ())
                    if isinstance(d, str) and d and not made_up_dim(d, t.name, axis)}
        if not could_hold(ctx, ((outputs[name], axis) for name, axis in declared)):
            return  # the size analysis is only paid for where an output could be held
        sizes = sizes_of(ctx)
        for frozen in frozen_outputs(sizes):
            held = held_by(sizes, outputs[frozen.name], frozen.axis)
            if isinstance(held, str):
                yield self.reject(f"output '{frozen.name}' axis {frozen.axis} stays {frozen.value}: {held}")
            else:
                yield self._finding(ctx, frozen, held)

    def _finding(self, ctx: RuleContext, frozen: FrozenOutput, held: Widening) -> Finding:
        value = held.value  # the widened size; a Slice on the way may have cut the output's
        built, made = _what_builds(ctx, held, value)
        message = (f"output '{frozen.name}' axis {frozen.axis} ('{frozen.dim}', declared dynamic) is {frozen.value} "
                   f"at every size: {built}")
        exported = sized_at_export(ctx, value, near=True)
        where = {"nodes": [held.node], "tensors": [held.tensor] + ([held.narrow] if held.narrow is not None else [])}
        learned = held.narrow is not None and not reads_inputs(held.narrow)
        if exported and made and not learned:
            return self.finding(
                f"{message}; {value} comes from an export size: {'; '.join(exported)}. A size computed in Python while "
                f"tracing ({made}) holds the axis: PyTorch's follows the input, the graph's never will", **where,
                hint=HINT)
        unknown = unknown_at_export(ctx) if made and not learned and not exported else []
        if unknown:  # a size computed at export, or the model's own length declared dynamic: which, nothing tells
            return self.finding(
                f"{message}; the export size of {', '.join(unknown)} is not known, so {value} may be a size computed "
                f"in Python while tracing ({made}), which the graph holds at every other size while PyTorch's "
                f"follows the input; if the model keeps {value} on purpose, the declaration is wrong. Give "
                "--trace-shape to tell", **where, hint=HINT)
        why = f"no input dim's export size is known to be {value}" if not exported else \
            f"{value} comes from an export size ({'; '.join(exported)}), but " + (
                f"'{held.narrow.name}' is computed from weights alone (learned slots spread to {value} leave the "
                "same graph)" if learned else "the constant's values do not follow from its size (learned slots "
                "leave the same graph)")
        return self.finding(f"{message}; if {value} was a size computed while tracing, the graph is wrong at every "
                            f"other size, and if the model keeps {value} on purpose, the declaration is ({why})",
                            **where, hint=HINT, severity=Severity.WARNING)


def _what_builds(ctx: RuleContext, held: Widening, value: int) -> tuple[str, str]:
    """What widens the axis, in words, and the PyTorch that builds it from a size ('' where the values of a constant
    operand do not follow from its size)."""
    node, narrow = held.node, held.narrow
    if held.kind == EXPAND:
        return (f"Expand '{node.name}' widens '{narrow.name}' (1 there) to entry {held.axis} of its shape, {value}",
                "`expand(-1, int(T), -1)`")
    if held.kind == CONSTANT_OF_SHAPE:
        return (f"ConstantOfShape '{node.name}' fills a shape whose entry {held.axis} is {value}",
                "`torch.zeros(B, int(T), 8)`")
    if held.kind == TILE:
        return f"Tile '{node.name}' repeats '{narrow.name}' (1 there) {value} times", "`h.repeat(1, int(T), 1)`"
    if held.kind == RESIZE:
        return (f"Resize '{node.name}' takes '{narrow.name}' to entry {held.axis} of its sizes, {value}",
                "`F.interpolate(x, size=int(T))`")
    assert held.kind == CONSTANT
    table = ctx.constant_value(held.tensor)
    built = (f"{node.op} '{node.name}' broadcasts '{narrow.name}' (1 there) against constant '{held.tensor.name}' "
             f"{list(np.shape(table)) if table is not None else ''}, {value} along axis {held.axis}")
    if table is None:
        return built, ""
    family = size_family(table, held.axis)
    if family == "uniform":
        return built + ", where its values do not vary", "`torch.ones(int(T), 8)`"
    if family == "arange":
        return built + ", 0, 1, 2, ... along it", "`torch.arange(int(T))`"
    return built, ""
