"""A whole table folded to N rows and cut to a length at run time: `self.cos_cached[: x.shape[1]]` (a Slice from 0)
or `self.cos_cached[torch.arange(x.shape[1])]` (a Gather of the positions 0 .. T-1, CLVP's rotary cache), the rows
met with that length downstream: the graph runs only while the length is <= N. GF006 reads such a table's values
(graphfix.analysis.sinusoids) to say whether a longer one is a formula it can compute.

    cut = rows_cut_at_a_length(ctx, node)   # (value, the axis of its rows, (tensor, axis) of the length) or None
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.broadcast import BROADCAST_OPS
from graphfix.analysis.constants import Sym
from graphfix.analysis.sizes import sizes_of
from graphfix.analysis.sizes.arith import same
from graphfix.analysis.sizes.ops import is_table

MOVES = frozenset({"Unsqueeze", "Cast", "Identity"})  # positions pass them as they are


def rows_cut_at_a_length(ctx, node: gs.Node) -> tuple[np.ndarray, int, tuple[gs.Tensor, int]] | None:
    """(the float constant, the axis of its rows, (tensor, axis) of the length) when `node` is a Slice of a
    constant's rows (an axis before its last, every other one of size 1: `[T, D]`, a rotary cache `[T, 1, 1, D]`)
    from 0 to a dim of a tensor read at run time, step 1, or a Gather of its rows at Range(0, that dim, 1). A table
    still computed in the graph is not one (its positions are GF006's `_length_caps`')."""
    if node.op not in ("Slice", "Gather") or len(node.inputs) < (3 if node.op == "Slice" else 2) \
            or not _folded_whole(node.inputs[0], ctx.model.graph):
        return None
    value = ctx.constant_value(node.inputs[0])
    if value is None or value.dtype.kind != "f" or value.ndim < 2:
        return None
    found = _sliced(ctx, node) if node.op == "Slice" else _gathered(ctx, node)
    if found is None:
        return None
    axis, end = found[0] % value.ndim, found[1]
    if axis == value.ndim - 1 or any(d != 1 for k, d in enumerate(value.shape[:-1]) if k != axis) \
            or not isinstance(end, Sym) or end.kind != "dim" \
            or not _meets_the_length(ctx, node.outputs[0], axis - value.ndim, end.tensor, end.index):
        return None
    return value, axis, (end.tensor, end.index)


def _sliced(ctx, node: gs.Node) -> tuple[int, object] | None:
    """(axis, end) of a Slice from 0 with step 1 along one axis."""
    ev = ctx.evaluator
    starts, ends = ev.elems(node.inputs[1]), ev.elems(node.inputs[2])
    given = list(node.inputs[3:5])
    axes = ev.elems(given[0]) if given and given[0].name else [0]
    steps = ev.elems(given[1]) if len(given) > 1 and given[1].name else [1]
    if starts != [0] or steps != [1] or ends is None or len(ends) != 1 or axes is None or len(axes) != 1 \
            or type(axes[0]) is not int:
        return None
    return axes[0], ends[0]


def _gathered(ctx, node: gs.Node) -> tuple[int, object] | None:
    """(axis, limit) of a Gather at Range(0, limit, 1), moved through Unsqueeze and Cast only."""
    positions = node.inputs[1]
    while positions.inputs and positions.inputs[0].op in MOVES:
        positions = positions.inputs[0].inputs[0]
    made = positions.inputs[0] if positions.inputs else None
    if made is None or made.op != "Range":
        return None
    start, limit, delta = (ctx.evaluator.elems(t) for t in made.inputs[:3])
    if start != [0] or delta != [1] or limit is None or len(limit) != 1:
        return None
    return int(node.attrs.get("axis", 0)), limit[0]


def _meets_the_length(ctx, rows: gs.Tensor, at: int, carrier: gs.Tensor, index: int) -> bool:
    """Whether every reader of the cut rows (axis `at`, from the right) is an elementwise op that meets them, row
    for row, with a dim of the length they were cut to (as the size analysis computes dims), past Unsqueezes that
    add axes on the left of the rows only: then a longer input fails there, and a longer table is what it needs. A
    table reduced, only measured or broadcast against 1 runs at any length as it is: not this case."""
    readers = _through_unsqueezes(ctx, rows, at)
    if not readers or any(reader.op not in BROADCAST_OPS for reader, _ in readers):
        return False
    sizes = sizes_of(ctx)
    dims = sizes.shape(carrier)
    length = dims[index] if dims is not None and index < len(dims) else None
    if length is None or length.is_number:
        return False
    for reader, read in readers:
        others = [sizes.shape(t) for t in reader.inputs if t is not read and (t.name or isinstance(t, gs.Constant))]
        if not any(o is not None and len(o) >= -at and o[at] is not None and same(o[at], length) for o in others):
            return False
    return True


def _through_unsqueezes(ctx, rows: gs.Tensor, at: int) -> list[tuple[gs.Node, gs.Tensor]]:
    """(reader, the tensor it reads) past each Unsqueeze whose new axes are all left of axis `at` (from the right),
    where the rows stay at `at`; an Unsqueeze that puts one on their right is kept as a reader (no match)."""
    found, todo = [], [rows]
    while todo:
        tensor = todo.pop()
        for reader in tensor.outputs:
            axes = ctx.constant_value(reader.inputs[1]) if reader.op == "Unsqueeze" and len(reader.inputs) > 1 \
                else np.array(reader.attrs.get("axes", []), np.int64) if reader.op == "Unsqueeze" else None
            shape = ctx.shape(reader.outputs[0]) if axes is not None else None
            rank = len(shape) if shape is not None else None
            if axes is not None and rank and all((int(a) % rank) - rank < at for a in np.ravel(axes)):
                todo.append(reader.outputs[0])
            else:
                found.append((reader, tensor))
    return found


def _folded_whole(tensor: gs.Tensor, graph) -> bool:
    """A table folded whole (nothing of its computation left, `is_table`) that no feed can replace (an initializer
    that is also a graph input may be fed another table)."""
    return is_table(tensor) and tensor.name not in {t.name for t in graph.input}
