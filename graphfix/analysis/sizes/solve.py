"""Constraints solved: the export-time size a constraint pins, and the expressions that baked entries stand for.

A Reshape `[T, B, 16] -> Concat([7], B*4, [4])` conserves elements only when `16*B*T = 112*B`, i.e. at T = 7: the
trace baked T. Entry 0 is the only constant entry that a whole-number expression of the sizes can replace so that
the element count holds at every size (`16*B*T / (4*B*4) = T`); entry 2 would need `4*T/7`. One such entry is a
solved fix; several are ambiguous and the caller reports them.

A Slice cut at a constant end (`x[:, :int(T) - 1]` traced at T = 7 is `x[:, :6]`, of length `Min(T, 6)`) meeting
`x[:, 1:]` (length `T - 1`) holds only where the Min takes its constant, at T = 7; the end stands for `T - 1`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.sizes.along import meeting, passed_along
from graphfix.analysis.sizes.arith import as_expr, same
from graphfix.analysis.sizes.core import Constraint, Sizes
from graphfix.analysis.sizes.limits import frozen_by_other_entries
from graphfix.analysis.sizes.ops import weight_dims
from graphfix.analysis.sizes.roots import Solver
from graphfix.core.lazy import hypotheses, sympy  # imported on first use: see graphfix.core.lazy

MAX_CANDIDATES = 4


@dataclass
class Solution:
    """A constraint that holds at one value of one symbol only: the export-time size the trace baked. `cut` is the
    `Min(size, c)` of a constant slice end when the constraint holds only on its constant side."""

    constraint: Constraint
    symbol: sympy.Symbol
    value: int
    cut: sympy.Min | None = None


@dataclass
class BakedEntry:
    """Entry `index` of a shape vector holds `value`, the export-time value of `expr`."""

    index: int
    value: int
    expr: sympy.Expr
    others: tuple = ()  # further expressions that fit the same entry (ambiguous: not a SAFE fix)
    near: gs.Tensor | None = None  # the operand that meets the entry (its carrier first; `along.meeting`)


@dataclass
class BakedShape:
    """A node whose shape vector bakes `symbol` = `value`; `entries` holds one candidate (solved) or several."""

    node: gs.Node
    solution: Solution
    entries: list[BakedEntry]
    product: bool = False  # the size is a product of several (a grid's H * W): an entry as a whole, factors unknown

    @property
    def equation(self) -> str:
        return f"{self.solution.constraint.left} = {self.solution.constraint.right}"


def solve(constraint: Constraint, solver: Solver | None = None) -> Solution | None:
    """The one positive whole value of one symbol at which the constraint holds, else None. `solver`: the graph
    state's (`sizes.solver`: each equation solved once, sympy's time bounded in all); a fresh one by default."""
    solver, where = solver or Solver(), _where(constraint)
    equation = sympy.expand(constraint.left - constraint.right)
    found = solver.one_root(equation, where)
    if found is not None:
        return Solution(constraint, *found)
    cut = _constant_cut(equation)
    if cut is None:
        return None
    found = solver.one_root(equation.xreplace({cut: _constant_side(cut)}), where)
    if found is None or not _takes_constant_side(cut, *found):
        return None
    return Solution(constraint, *found, cut=cut)


def _where(constraint: Constraint) -> str:
    return constraint.node.name if constraint.node is not None else constraint.kind


def _constant_cut(equation: sympy.Expr) -> sympy.Min | None:
    """The one `Min(size, c)` in `equation` whose size side can never satisfy it (`T == T - 1`): the equation then
    holds, if anywhere, only where the Min takes c. A length cap (`Min(512, S) == S`, true on S <= 512) is not one."""
    mins = [m for m in equation.atoms(sympy.Min) if len(m.args) == 2 and sum(a.is_Integer for a in m.args) == 1]
    if len(mins) != 1:
        return None
    sized = next(a for a in mins[0].args if not a.is_Integer)
    rest = sympy.expand(equation.xreplace({mins[0]: sized}))
    return mins[0] if rest.is_number and rest != 0 else None


def _constant_side(cut: sympy.Min) -> sympy.Integer:
    return next(a for a in cut.args if a.is_Integer)


def _takes_constant_side(cut: sympy.Min, symbol: sympy.Symbol, value: int) -> bool:
    sized = next(a for a in cut.args if not a.is_Integer)
    return bool(sized.free_symbols == {symbol} and sized.subs(symbol, value) >= _constant_side(cut))


def solve_length(constraint: Constraint, solver: Solver | None = None, caps: frozenset[int] = frozenset()
                 ) -> tuple[Solution, sympy.Expr] | None:
    """The one whole value of a length derived through a floor (a strided Conv's frames, `floor((T - 16)/8) + 1`)
    or a cap (a length cut to a table, `ids[:, :64]`: `Min(64, T)`, red team 99) at which the constraint holds: the
    trace baked that length, whatever input size gave it. A cap only of a number in `caps` (the dims of the
    graph's weights: 64 positions of a table): `x[:, :int(y.shape[1])]` leaves the same `Min(50, T)` with 50 the
    export size of another input, and its rebuild was wrong (helper 101). Lengths met only as their product are one
    (a grid of patches: floor(H/8) * floor(W/8) tokens), and so are input sizes met only as their product
    (`_product_of_sizes`). Returns the solution (its symbol the length), the length."""
    floors = {f for side in (constraint.left, constraint.right) for f in side.atoms(sympy.floor)}
    floors |= {cap for side in (constraint.left, constraint.right) for cap in side.atoms(sympy.Min, sympy.Max)
               if any(arg.is_Integer and int(arg) in caps for arg in cap.args)}
    if not floors and not any(side.has(sympy.Min, sympy.Max) for side in (constraint.left, constraint.right)):
        return _product_of_sizes(constraint, solver or Solver())
    if not floors or any(len(inner.free_symbols) != 1 for inner in floors):
        return None  # each a derived length of one input size; each as the graph has it (`floor(...) + 1`) below
    sums = {f: [a for side in (constraint.left, constraint.right) for a in side.atoms(sympy.Add) if a.has(f)]
            for f in floors}
    length = sympy.Mul(*dict.fromkeys(min(sums[f], key=sympy.count_ops) if sums[f] else f for f in floors))
    symbol = sympy.Symbol(f"({length})" if length.is_Add else str(length), integer=True, positive=True)
    left, right = (side.xreplace({length: symbol}) if len(floors) == 1 else side.subs(length, symbol)
                   for side in (constraint.left, constraint.right))
    if any(side.has(inner) for side in (left, right) for inner in floors):
        return None  # a length apart from the others (several would need several equations)
    found = (solver or Solver()).one_root(sympy.expand(left - right), _where(constraint))
    if found is None or found[0] != symbol:
        return None
    return Solution(Constraint(constraint.kind, constraint.node, left, right, constraint.detail), symbol,
                    found[1]), length


def _product_of_sizes(constraint: Constraint, solver: Solver) -> tuple[Solution, sympy.Expr] | None:
    """Input sizes met only as their product, as one length: `reshape(B, 8, int(H) * int(W))` holds its element
    count `8*B*H*W` at H * W = 120 only, and no one of them alone is pinned (red team 113). The one group of two
    or more sizes (of at most 4 in the equation) whose product, taken as one symbol, leaves none of them and has
    one root; None where no group or several do."""
    difference = constraint.left - constraint.right
    if not 2 <= len(difference.free_symbols) <= 4:
        return None
    symbols, found = sorted(difference.free_symbols, key=str), []
    for count in range(2, len(symbols) + 1):
        for group in itertools.combinations(symbols, count):
            length = sympy.Mul(*group)
            symbol = sympy.Symbol(str(length), integer=True, positive=True)
            left, right = (side.subs(length, symbol) for side in (constraint.left, constraint.right))
            if any(side.has(size) for side in (left, right) for size in group):
                continue
            root = solver.one_root(sympy.expand(left - right), _where(constraint))
            if root is not None and root[0] == symbol:
                found.append((Solution(Constraint(constraint.kind, constraint.node, left, right, constraint.detail),
                                       symbol, root[1]), length))
    return found[0] if len(found) == 1 else None


def baked_reshapes(sizes: Sizes) -> Iterator[BakedShape]:
    """Reshapes whose element count holds at one size only, with the constant entries that can stand for it. The
    size may be an input's or a length derived from one (a Conv front end's frames)."""
    for constraint in sizes.constraints:
        if constraint.kind != "reshape":
            continue  # other constraints prove a size too, but only a shape vector entry can be rebuilt
        baked = _baked_shape(sizes, constraint)
        if baked is not None:
            yield baked


def _baked_shape(sizes: Sizes, constraint: Constraint) -> BakedShape | None:
    """The Reshape of `constraint` with its candidate entries (computed once per graph state: the hypotheses cost
    a few tenths of a second)."""
    cache = sizes.__dict__.setdefault("_baked_shapes", {})
    if id(constraint) not in cache:
        cache[id(constraint)] = _solve_shape(sizes, constraint)
    return cache[id(constraint)]


def _solve_shape(sizes: Sizes, constraint: Constraint) -> BakedShape | None:
    solution, length = solve(constraint, sizes.solver), None
    capped = solution is None and any(side.has(sympy.Min, sympy.Max) for side in (constraint.left, constraint.right))
    if solution is None and (derived := solve_length(constraint, sizes.solver, _weight_dims(sizes) if capped
                                                      else frozenset())) is not None:
        solution, length = derived
    if solution is None:
        return None
    target = [as_expr(t) for t in sizes.value(constraint.node.inputs[1])]
    # a grid's token count, or a product of sizes, is an entry as a whole or none (MobileViT's unfold splits its
    # grid: floor(P/16) fits it; `8 = floor(H*W/15)` beside `120 = H*W`)
    whole = length is not None and (len(length.atoms(sympy.floor, sympy.Min, sympy.Max)) > 1 or length.is_Mul)
    entries = _entries(solution.constraint.left, target, solution, sizes, constraint.node, whole)
    if whole and not entries:
        return None  # no entry is the count: the grid explains nothing here (other rules and the probe speak)
    if length is not None:  # each entry in terms of the input sizes again: the graph carries that length
        entries = [BakedEntry(e.index, e.value, e.expr.xreplace({solution.symbol: length}),
                              tuple(o.xreplace({solution.symbol: length}) for o in e.others)) for e in entries]
    return BakedShape(constraint.node, solution, entries, whole)


def _weight_dims(sizes: Sizes) -> frozenset[int]:
    """The dims of the graph's weights (rank 2 or more): the rows of its tables among them (once per graph state)."""
    if "_weight_dims" not in sizes.__dict__:
        sizes.__dict__["_weight_dims"] = weight_dims(sizes.graph)
    return sizes.__dict__["_weight_dims"]


def baked_expands(sizes: Sizes) -> Iterator[BakedShape]:
    """Expands whose shape vector holds a constant entry that a broadcast right after meets with a size, which holds
    at one size only: speechbrain's `length_to_mask`, `arange(T).expand(len(lengths), T) < lengths.unsqueeze(1)`,
    traced at batch 2 bakes `[2, T]`, and the Less holds at B = 2 only. The entry stands for that size (the
    expanded dim has no other source: the Expand's input has 1 or nothing there)."""
    seen: set[tuple[int, int]] = set()
    for solution, number, size, axis in broadcast_pins(sizes):
        for tensor in solution.constraint.node.inputs:
            found = _expanded_entry(sizes, tensor, axis, number)
            if found is not None and (id(found[0]), found[1]) not in seen:
                seen.add((id(found[0]), found[1]))
                near = meeting(solution.constraint.node, tensor, found[0])
                yield BakedShape(found[0], solution, [BakedEntry(found[1], number, size, near=near)])


def broadcast_pins(sizes: Sizes) -> Iterator[tuple[Solution, int, sympy.Expr, int]]:
    """(solution, number, size, axis from the end) of each broadcast, or Concat off its axis, that holds at one size
    only, a constant `number` of one operand meeting `size` of another on that axis (`baked_expands`,
    `sizes.held`)."""
    for constraint in sizes.constraints:
        solution = solve(constraint, sizes.solver) if constraint.kind in ("broadcast", "concat") else None
        if solution is None or solution.cut is not None or not constraint.detail.startswith("axis "):
            continue
        number, size = (constraint.left, constraint.right) if constraint.left.is_Integer else \
            (constraint.right, constraint.left)
        if number.is_Integer:
            rank, axis = len(sizes.shape(constraint.node.outputs[0]) or ()), int(constraint.detail.split()[1])
            yield solution, int(number), size, axis - rank


def _expanded_entry(sizes: Sizes, tensor: gs.Tensor, axis: int, number: int) -> tuple[gs.Node, int] | None:
    """(Expand node, entry index) where `tensor` is an Expand's output, or passes one's dim `axis` (negative: from
    the end) along, that comes from the constant entry `number` of its shape vector alone."""
    tensor, axis = passed_along(sizes, tensor, axis)
    node = tensor.inputs[0] if tensor.inputs else None
    if node is None or node.op != "Expand":
        return None
    target, data = sizes.value(node.inputs[1]), sizes.shape(node.inputs[0])
    if target is None or data is None or -axis > len(target):
        return None
    entry = len(target) + axis
    if as_expr(target[entry]) != number or (-axis <= len(data) and data[axis] != 1):
        return None
    return node, entry


@dataclass
class BakedSlice:
    """A Slice whose end `position` (of its ends vector) holds `value`, the export-time value of `expr`: the cut
    `solution.cut` is what makes its constraint hold at one size only."""

    node: gs.Node
    solution: Solution
    position: int
    value: int
    expr: sympy.Expr


def baked_slices(sizes: Sizes) -> Iterator[BakedSlice]:
    """Slices cut at a constant end that a constraint elsewhere pins to one size, with the expression the end stands
    for: the other side of that constraint, solved for the cut."""
    for constraint in sizes.constraints:
        solution = solve(constraint, sizes.solver)
        if solution is None or solution.cut is None:
            continue
        cut, free = solution.cut, sympy.Dummy("end", integer=True)
        cut_side, other = (constraint.left, constraint.right) if constraint.left.has(cut) else \
            (constraint.right, constraint.left)
        ends = sizes.solver.roots(cut_side.xreplace({cut: free}) - other, free, _where(constraint))
        if ends is None or len(ends) != 1 or ends[0].subs(solution.symbol, solution.value) != _constant_side(cut):
            continue  # the cut is not a whole-number expression of the sizes
        for node, position in _slices_cut_by(sizes, cut):
            yield BakedSlice(node, solution, position, int(_constant_side(cut)), ends[0])


@dataclass
class BakedPad:
    """A Pad whose amount `value` at `position` of its pads vector rounds `length` up to a multiple of `chunk` at
    the export size only: it stands for `expr`, `(chunk - length % chunk) % chunk`."""

    node: gs.Node
    multiple: Constraint
    position: int
    value: int
    length: sympy.Expr
    chunk: int

    @property
    def expr(self) -> sympy.Expr:
        return sympy.Mod(self.chunk - sympy.Mod(self.length, self.chunk), self.chunk)


def baked_pads(sizes: Sizes) -> Iterator[BakedPad]:
    """Pads by a constant p < k of a length L that a Reshape then splits into chunks of k: `L + p` is a multiple of
    k only where L is at export (`(k - int(T) % k) % k` computed in Python while tracing)."""
    for multiple in sizes.multiples:
        padding, length = multiple.left.as_coeff_Add()
        chunk = int(multiple.right)
        if not (padding.is_Integer and 0 < padding < chunk and length.free_symbols):
            continue
        for node in sizes.graph.nodes:
            if node.op != "Pad" or not node.outputs or len(node.inputs) < 2:
                continue
            shape, out, pads = sizes.shape(node.inputs[0]), sizes.shape(node.outputs[0]), sizes.value(node.inputs[1])
            if shape is None or out is None or pads is None or len(pads) != 2 * len(shape):
                continue
            for axis, (before, after) in enumerate(zip(shape, out, strict=True)):
                begin, end = pads[axis], pads[axis + len(shape)]
                if before is not None and same(before, length) and after is not None and same(after, multiple.left) \
                        and {begin, end} == {0, padding}:
                    position = axis if begin == padding else axis + len(shape)
                    yield BakedPad(node, multiple, position, int(padding), length, chunk)


def _slices_cut_by(sizes: Sizes, cut: sympy.Min) -> Iterator[tuple[gs.Node, int]]:
    """(Slice, position in its ends) whose output length along that axis is `cut` (less a constant start)."""
    for node in sizes.graph.nodes:
        out = sizes.shape(node.outputs[0]) if node.op == "Slice" and node.outputs else None
        ends = sizes.value(node.inputs[2]) if out is not None and len(node.inputs) > 2 else None
        if not ends:
            continue
        axes = sizes.value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        axes = axes or tuple(range(len(ends)))
        for position, axis in enumerate(axes):
            dim = out[int(axis) % len(out)] if isinstance(axis, int) or as_expr(axis).is_Integer else None
            if dim is not None and dim.has(cut) and ends[position] == _constant_side(cut):
                yield node, position


def _entries(total: sympy.Expr, target: list[sympy.Expr], solution: Solution, sizes: Sizes | None = None,
             node: gs.Node | None = None, whole: bool = False) -> list[BakedEntry]:
    """The constant entries (> 1) that some expression of the sizes can replace so that the element count holds
    beyond the export size: each entry's hypotheses (graphfix.analysis.hypotheses) filtered by the count with the
    other entries kept, and by the outputs the exporter declared dynamic (an entry whose choice leaves one fixed at
    another constant's value is out). `others` keeps the further expressions that fit the same entry; `whole`:
    the size itself only."""
    found, frozen = [], []
    export = {solution.symbol: solution.value}
    for j, t in enumerate(target):
        if not t.is_Integer or t < 1 or (t == 1 and solution.value != 1 and not (
                sizes is not None and node is not None and _pooled(sizes, node, j))):
            continue  # -1 and 0 are never baked; a 1 where the size was 1 or its axis is pooled (`_pooled`)
        rest = sympy.Mul(*[x for k, x in enumerate(target) if k != j])
        requirement = hypotheses.Requirement(total, rest * hypotheses.hole(), "the element count")
        space = [h for h in hypotheses.size_hypotheses(int(t), export) if h.expr.free_symbols
                 and (not whole or h.expr == solution.symbol)]
        fits = hypotheses.determine({hypotheses.hole(): space}, [requirement], export).alternatives()
        if not fits:
            continue  # no expression of the sizes keeps the element count here
        entry = BakedEntry(j, int(t), fits[0].expr, tuple(h.expr for h in fits[1:]))
        if sizes is not None and node is not None and frozen_by_other_entries(sizes, node, entry.index):
            frozen.append(entry)  # a declared-dynamic output would stay at another entry's value: that one is it
            continue
        found.append(entry)
    return (found or frozen)[:MAX_CANDIDATES]  # all frozen: kept, and the rule says why none is sure


def _pooled(sizes: Sizes, node: gs.Node, axis: int) -> bool:
    """Whether a Reduce op pools the Reshape's output over `axis` or the next (axes it names): segments or chunks
    pooled, `reshape(B, 11, int(T) // 11, D).mean(2)` at T = 11 ([B, 11, 1, D], helper 143) or `reshape(B, int(T) //
    12, 12, D).mean(2)` at T = 12 ([B, 1, 12, D], helper 144), where the 1 may be the size's part. A kept axis of 1
    (`m.view(B, int(T), 1)`, summed over T: a masked mean) is none: read as one, it made such repairs ambiguous."""
    rank = len(sizes.shape(node.outputs[0]) or ())
    for reader in node.outputs[0].outputs:
        if not reader.op.startswith("Reduce") or not rank:
            continue
        axes = reader.attrs.get("axes")
        if axes is None and len(reader.inputs) > 1:
            axes = sizes.constant(reader.inputs[1])
        if axes is not None and {axis, axis + 1} & {int(a) % rank for a in np.asarray(axes).reshape(-1)}:
            return True
    return False


def determined_entries(sizes: Sizes, baked: BakedShape) -> list[BakedEntry]:
    """The entries the graph's constraints leave for `baked`'s Reshape, recomputed from its element count: what a
    rule checks the analysis' proposal against (each proposed entry must be one of these)."""
    for constraint in sizes.constraints:
        if constraint.kind == "reshape" and constraint.node is baked.node:
            again = _baked_shape(sizes, constraint)
            return again.entries if again is not None else []
    return []


def partly_constant(elems) -> bool:
    """A shape vector (elements: ints, or symbols computed at run time) mixing a constant entry > 1 with computed
    ones: the candidates of `baked_reshapes` that constant-vector checks do not see."""
    if not elems or all(isinstance(e, int) for e in elems):
        return False
    return any(isinstance(e, int) and not isinstance(e, bool) and e > 1 for e in elems)
