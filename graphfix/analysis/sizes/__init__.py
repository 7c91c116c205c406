"""The symbolic size analysis every rule shares: `sizes_of(ctx)` (lazy, cached per graph state, time bounded).

    sizes = sizes_of(ctx)
    sizes.shape(tensor)      # (B, T, 16) as sympy expressions, None where unknown
    sizes.value(vector)      # (7, 4*B, 4): a shape vector element by element
    sizes.constraints        # what must hold for the graph to run at every size (and does not identically)
    for baked in baked_reshapes(sizes): ...   # solved: T = 7 at export, entry 0 stands for T
"""

from __future__ import annotations

import weakref

from graphfix.analysis.sizes.arith import at_floors
from graphfix.analysis.sizes.core import Constraint, Sizes
from graphfix.analysis.sizes.held import broadcast_only, held_reshapes
from graphfix.analysis.sizes.limits import (
    Cap,
    FixedPad,
    FrozenOutput,
    caps,
    downstream_outputs,
    fixed_length_pads,
    frozen_by_other_entries,
    frozen_by_pads,
    frozen_outputs,
)
from graphfix.analysis.sizes.roots import Solver
from graphfix.analysis.sizes.solve import (
    BakedEntry,
    BakedPad,
    BakedShape,
    BakedSlice,
    Solution,
    baked_expands,
    baked_pads,
    baked_reshapes,
    baked_slices,
    determined_entries,
    partly_constant,
    solve,
)
from graphfix.analysis.sizes.ties import bind, relations
from graphfix.core.recent import per_model
from graphfix.io.torch_ranges import guarded_least

BUDGET_S = 3.0  # the whole pass; past it the analysis is incomplete, never wrong
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def sizes_of(ctx) -> Sizes:
    """The size analysis of this rule context's graph, built on first use (rules without a candidate never pay)."""
    if ctx not in _CACHE:
        _CACHE[ctx] = Sizes(ctx.graph, ctx.evaluator.value, budget_s=BUDGET_S, solver=Solver(ctx.notes))
    return _CACHE[ctx]


def own_floors(ctx) -> dict:
    """Symbol -> the least size torch.export guarded the model for (`graphfix.io.torch_ranges`: a branch
    `if x.shape[1] >= 14:` kept under `T >= 14`, a `Dim("T", min=14)`): there `x[:, 2:14]` is 12 long, as the
    module's is (`at_floors`). Empty without the exporter's record: the graph alone does not tell a window of the
    model's own from a number the export kept (helpers 147 and 152)."""
    return {sizes_of(ctx).symbol(name): low for name, low in guarded_least(ctx.model).items()}


def sizes_if(ctx, op: str) -> Sizes | None:
    """The size analysis, only where the graph holds an `op` node (a rule that reads what it solves about that op
    pays nothing on other graphs)."""
    return sizes_of(ctx) if any(node.op == op for node in ctx.graph.nodes) else None


def static_sizes(model) -> tuple[Sizes, object]:
    """The size analysis of a model proto outside any rule (the proof's probe sizes), with the imported graph its
    shapes are keyed by."""
    import onnx_graphsurgeon as gs

    from graphfix.analysis.context import RuleContext
    from graphfix.analysis.shapes import infer_shapes
    from graphfix.core.rule import RuleOptions
    from graphfix.io.sources import guard_external

    inferred = infer_shapes(model)
    graph = gs.import_onnx(inferred)
    guard_external(graph)  # external data is read from the model's folder only, never through gs
    ctx = RuleContext(inferred, graph, None, RuleOptions(static=True))
    return sizes_of(ctx), ctx.graph


@per_model  # every probe_sizes call asks
def tied_dims(model) -> dict:
    """Graph-input dims of `model` that its constraints compute from other input dims (see `relations`)."""
    names = {d.dim_param for vi in model.graph.input for d in vi.type.tensor_type.shape.dim if d.dim_param}
    # batch and one length: nothing to tie (a tie needs a dim besides the one it is computed from)
    return relations(static_sizes(model)[0]) if len(names) >= 3 else {}


__all__ = [
    "BakedEntry", "BakedPad", "BakedShape", "BakedSlice", "Cap", "Constraint", "FixedPad", "FrozenOutput", "Sizes",
    "Solution", "at_floors", "baked_expands", "baked_pads", "baked_reshapes", "baked_slices", "bind",
    "broadcast_only", "caps", "determined_entries", "downstream_outputs", "fixed_length_pads",
    "frozen_by_other_entries", "frozen_by_pads", "frozen_outputs", "held_reshapes", "own_floors", "partly_constant",
    "relations", "sizes_if", "sizes_of", "solve", "static_sizes", "tied_dims",
]
