"""Reshapes whose constant shape the broadcasts right after hold: `h.reshape(int(B), int(T), D) + x`.

A flattened `[B*T, D]` unflattened with Python ints bakes `[2, 12, D]`: its element count fixes the product of
the two entries, not which is which (2 * 12 or 3 * 8), and the size analysis cannot solve it alone. An Add with
`x` of `[B, T, D]` right after holds at B = 2 and T = 12 only, axis by axis: entry 0 meets B, entry 1 meets T.
Where every such entry is replaced by the size it meets and the element count then holds at every size, the
shape is determined: the entries that broadcast against a size of more than one must be that size, and the count
leaves no room for another. Where the count does not hold so, nothing is rebuilt (GF003 reports the broadcast);
nor where two broadcasts meet one entry with two sizes, or a rebuilt entry held a number another entry holds
(`reshape(int(B), int(H), int(W), C) + x.transpose(1, 2)` traced square: H or W, each is either, and where a
size is 1 the broadcast no longer tells them apart, helper 125; so `reshape(2, int(T), int(B), 4)`, 2 heads at
batch 2, against `[B, T, 1, 1]`: at B = 1 PyTorch broadcasts its 2 heads where the rebuilt batch would be).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import onnx_graphsurgeon as gs

from graphfix.analysis.sizes.along import meeting, passed_along
from graphfix.analysis.sizes.arith import as_expr, same
from graphfix.analysis.sizes.core import Sizes
from graphfix.analysis.sizes.solve import BakedEntry, BakedShape, Solution, broadcast_pins


def held_reshapes(sizes: Sizes) -> Iterator[BakedShape]:
    """Reshapes of a constant shape (no 0, no -1) whose entries broadcasts meet with sizes, axis by axis, each
    with those entries (the size each meets), where the element count holds at every size once they are rebuilt."""
    held: dict[int, tuple[gs.Node, Solution, dict[int, list[BakedEntry]]]] = {}
    for solution, number, size, axis in broadcast_pins(sizes):
        if size.is_Integer:
            continue
        for tensor in solution.constraint.node.inputs:
            found = _constant_entry(sizes, tensor, axis, number)
            if found is not None:
                entries = held.setdefault(id(found[0]), (found[0], solution, {}))[2]
                near = meeting(solution.constraint.node, tensor, found[0])
                entries.setdefault(found[1], []).append(BakedEntry(found[1], number, size, near=near))
    for node, solution, met in held.values():
        entries = {j: sizes_met[0] for j, sizes_met in met.items()}
        target = [int(t) for t in sizes.value(node.inputs[1])]
        if all(same(e.expr, entries[j].expr) for j, sizes_met in met.items() for e in sizes_met) \
                and all(target.count(e.value) == 1 for e in entries.values()) \
                and _count_holds(sizes, node, target, entries):
            yield BakedShape(node, solution, [entries[j] for j in sorted(entries)])


def _constant_entry(sizes: Sizes, tensor: gs.Tensor, axis: int, number: int) -> tuple[gs.Node, int] | None:
    """(Reshape node, entry index) where `tensor` is the output of a Reshape of a constant shape vector of positive
    entries whose dim `axis` (negative: from the end) is the entry `number` (or a tensor that passes it along)."""
    tensor, axis = passed_along(sizes, tensor, axis)
    node = tensor.inputs[0] if tensor.inputs else None
    if node is None or node.op != "Reshape":
        return None
    target = sizes.value(node.inputs[1])
    if target is None or -axis > len(target) or not all(as_expr(t).is_Integer and int(t) > 0 for t in target):
        return None
    entry = len(target) + axis
    return (node, entry) if int(target[entry]) == number else None


def _count_holds(sizes: Sizes, node: gs.Node, target: list[int], entries: dict[int, BakedEntry]) -> bool:
    """Whether the Reshape's input holds as many elements as its shape `target` with `entries` rebuilt, at every
    size."""
    data = sizes.shape(node.inputs[0])
    if data is None or any(d is None for d in data):
        return False
    rebuilt = [entries[j].expr if j in entries else t for j, t in enumerate(target)]
    return same(math.prod(data), math.prod(rebuilt))


def broadcast_only(baked: BakedShape, computed: bool) -> frozenset[str]:
    """The input dims a rebuilt Expand entry follows where only a broadcast holds it in a constant shape: a count of
    the model's own fits too, which a size of 1 broadcasts against (helper 130: `x + mono.expand(-1, 2, -1)`, 2
    channels at every C). Empty where the graph determines the entry: a Reshape's element count, a Concat (which
    does not broadcast), an Expand shape computed at run time but for the entry (`computed`)."""
    if baked.node.op != "Expand" or computed or baked.solution.constraint.kind == "concat":
        return frozenset()
    return frozenset(str(symbol) for entry in baked.entries for symbol in entry.expr.free_symbols)
