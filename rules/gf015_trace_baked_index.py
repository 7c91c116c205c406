"""GF015 trace-baked-index."""

from __future__ import annotations

from collections.abc import Iterator

from graphfix.analysis.context import RuleContext
from graphfix.analysis.echoes import index_echoes, scale_echoes
from graphfix.analysis.export_sizes import export_sizes
from graphfix.core.rule import Finding, Rejection, Rule, Severity

HINT = ("Keep the size a tensor while tracing (`h[:, h.shape[1] // 2:]`, `torch.roll(h, h.shape[1] // 2, 1)`, "
        "`F.interpolate(x, size=x.shape[2:])`, not `int(...)`), then re-export; if the number is the model's own, "
        "the warning can be left (`--skip GF015`).")


class TraceBakedIndex(Rule):
    """Integers that equal a form of an export size `--trace-shape` gives, read along an axis of that size.

    ## What it does
    Where `--trace-shape` gives the export sizes, finds the integer constants that cut, index, roll or count
    along an axis the graph leaves dynamic in a plain form of one of them: the size, one less or more, a half
    (rounded down or up) or twice it, or their negatives (`h[:, int(T) // 2:]` traced at 13 cuts at 6,
    `torch.roll(h, int(T) // 2, 1)`, `h.topk(int(T) // 2, 1)`, `F.interpolate(x, size=(int(H), int(W)))`, a pad,
    a Pool's kernel, a Tile's repeats, a value such as `lengths.clamp(max=int(T))`): the integer echoes the proof
    reads beside a fix (graphfix.analysis.int_echoes, which reads more forms there), read here where no fix asks
    (helper 133: four such heads on a Llama, with the export size given, had no finding and went out with exit 0,
    wrong by up to 5 at other lengths). And the float scalars that scale positions along such an axis by the
    size, one less or more, or their inverses (`arange(T) / int(T)`, linspace's `/ (int(T) - 1)`:
    graphfix.analysis.echoes.scale_echoes; a sum so scaled is GF012's). Only the sizes the user gave: a constant
    the graph pins another rule reports.

    ## Why it breaks deployment
    The model runs at every size and keeps the export's number: half the export length, its rolled positions,
    its output size. Nothing fails and `repair` compares the model with itself.

    ## Example
    ```python
    return h[:, int(h.shape[1]) // 2:].mean(1)   # traced at T = 13: Slice(h, 6, end), at every length
    return h[:, h.shape[1] // 2:].mean(1)        # the start follows the length
    ```

    ## Fix safety
    Not repaired: a model's own number (`h[:, 4:]` at 13 frames is also `T // 3`) gives the same graph. A
    warning: re-export at another length, where a baked number moves with it.
    """

    code = "GF015"
    name = "trace-baked-index"
    severity = Severity.WARNING

    def detect(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        if not ctx.options.trace_shapes:
            return
        exported = export_sizes(ctx, ctx.evaluator)
        given = {dim: exported.values[dim] for dim in exported.given if dim in exported.values}
        sizes = set(given.values())
        for node, line in [*index_echoes(ctx.graph, sizes, ctx.constant_value, ctx.shape_filled, ctx.evaluator),
                           *scale_echoes(ctx.graph, sizes, ctx.constant_value, ctx.shape_filled)]:
            said = ", ".join(f"{dim}={size}" for dim, size in sorted(given.items()))
            yield self.finding(
                f"{line} at the export size --trace-shape gives ({said}): if it was computed from that size in "
                "Python while tracing, it stays at every other size, with no error",
                nodes=[node.name], hint=HINT)
