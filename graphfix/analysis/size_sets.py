"""Constants whose values are a matched set of the graph's own sizes at the export size (GF006).

transformers' DeformableDetr divides its sampling offsets by `offset_normalizer`, the (width, height) of each
feature level, stacked from `spatial_shapes`, a tensor built from Python ints while tracing: the TorchScript
exporter folds it to `[[12, 8], [6, 4], [3, 2]]` (traced at 64x96, levels of stride 8, 16, 32). It broadcasts at
every size, so nothing fails, and every other image size is sampled at the wrong places (helper 82).

The evidence is a matched set, never one number: the constant, read as rows along its last axis that is not 1,
has in every row the sizes of two or three adjacent dims of one tensor (a feature map's height and width, in the
constant's order or reversed, the same way in every row), each dim an expression of the inputs' dynamic dims the
size analysis carries through Conv and Pool (`floor(H/8 - 1/8) + 1`), or every one of them less 1 (the last index,
align_corners' `2 * x / (W - 1) - 1`, helper 85), at one export size:
- given with `--trace-shape`: every row is such a pair at that size, and two entries are 3 or more (one square
  row alone is not: a 4 by 4 map and anchors' stride 4 are alike);
- not given: two rows or more of distinct pairs, one of them not square (so that which value is the height is
  told), each dynamic dim constrained by two rows, and one export size, searched, at which every row holds.
Rows that are all fixed sizes the graph holds (a resize to a fixed 64 by 96, read back: torchvision's SSD at its
`fixed_size`) are read as those, never as the export size (helper 85).
A lone small integer (2, 3, 8, a kernel, a head count), a 1-D list of lengths (strides `[8, 16, 32]` equal the
sizes at /64, /32, /16 of a large enough image) and a constant no arithmetic op reads are never read.
Each row's pair is one hypothesis where only one pair of expressions matches it; a square export (`H = W`) leaves
two, (H, W) and (W, H), and the rebuild is not offered.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.builders import Builder, onnx_type
from graphfix.analysis.sizes import sizes_of
from graphfix.core.lazy import sympy  # imported on first use: see graphfix.core.lazy

READERS = frozenset({"Add", "Sub", "Mul", "Div", "Min", "Max", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
                     "Equal"})  # the ops through which a folded size reaches data
MAX_ENTRIES = 48  # a level's sizes, a few levels: not a weight
SEARCH = 1 << 14  # the largest export size searched where none is given
MAX_SOLUTIONS = 64  # past one, the rows' pairs are ambiguous; the search stops here
OFFSETS = (0, 1)  # a size, or a size less 1 (the last index: align_corners' `2 * x / (W - 1) - 1`)


@dataclass
class SizeSet:
    """A constant read by `node` (input `index`) whose rows are the sizes of `carriers` at the export size."""

    node: gs.Node
    index: int
    const: gs.Tensor
    value: np.ndarray
    carriers: list[tuple[gs.Tensor, tuple[int, ...]]]  # per row: a tensor and its axes, in the constant's order
    exprs: list[tuple]  # per row: the sizes' expressions, in the constant's order
    export: dict[str, tuple[int, int]]  # what the export size of each dynamic dim is (a range where searched)
    given: bool  # the export size came from --trace-shape
    others: list[list[tuple]] = field(default_factory=list)  # other rows' expressions that match as well
    offset: int = 0  # each value is a size less this (`[W - 1, H - 1]`, an align_corners normalisation)

    def rows(self) -> list[list[int]]:
        return self.value.reshape(len(self.exprs), -1).astype(np.int64).tolist()

    def describe(self) -> str:
        pairs = "; ".join(f"{row} = ({', '.join(str(e) for e in exprs)}) of '{tensor.name}'"
                          for row, exprs, (tensor, _) in zip(self.rows(), self.exprs, self.carriers, strict=True))
        at = ", ".join(f"{s}={lo}" if lo == hi else f"{s} in [{lo}, {hi}]" for s, (lo, hi) in self.export.items())
        return (f"{self.node.op} '{self.node.name}' reads constant '{self.const.name}' {list(self.value.shape)}, whose "
                f"rows are the sizes the graph computes from the inputs at the export size ({at}"
                f"{', --trace-shape' if self.given else ', the one size at which every row holds'}): {pairs}")


def _candidates(ctx) -> Iterator[tuple[gs.Node, int, gs.Tensor, np.ndarray, int]]:
    """Float constants of integer values an arithmetic op reads, whose rows could be two or three dims of one tensor."""
    for node in ctx.graph.nodes:
        if node.op not in READERS:
            continue
        for index, tensor in enumerate(node.inputs):
            value = ctx.constant_value(tensor)
            if value is None or not 2 <= value.size <= MAX_ENTRIES or value.dtype.kind != "f":
                continue  # an integer one is a shape's arithmetic (GF004's)
            if not np.all(value >= 1) or not np.array_equal(value, np.round(value)) or np.sum(value >= 3) < 2:
                continue  # 1s and 2s are every model's own; a size is a positive integer
            wide = [d for d in value.shape if d != 1]
            width = (wide[0] if wide[0] <= 3 else 2 if wide[0] == 4 else 0) if len(wide) == 1 else wide[-1]
            if width not in (2, 3):
                continue  # rows of one value are a list of lengths, or strides: not read
            yield node, index, tensor, value, width


def _runs(ctx, width: int) -> tuple[list[tuple[tuple, gs.Tensor, tuple[int, ...]]], dict[tuple[int, ...], str]]:
    """Every tensor's runs of `width` adjacent dims, in one walk over the graph:
    - each distinct run whose dims are all dynamic (the size analysis' expressions), with its first carrier in
      graph order;
    - each run of fixed dims above 1 of onnx's inference shapes, both ways round, with the first tensor that has it:
      the sizes a model holds at every size (a resize to a fixed 64 by 96). A constant all of whose rows are such
      sizes is read as those; one row alone may be any small static pair (DeformableDetr's 3 levels by 2 points)."""
    sizes = sizes_of(ctx)
    dynamic: dict[tuple, tuple[gs.Tensor, tuple[int, ...]]] = {}
    static: dict[tuple[int, ...], str] = {}
    for tensor in [*ctx.graph.inputs, *(t for node in ctx.graph.nodes for t in node.outputs)]:
        exprs, fixed = sizes.shape(tensor) or [], ctx.shape(tensor) or []
        for start in range(len(exprs) - width + 1):
            dims = exprs[start:start + width]
            if all(d is not None and d.free_symbols for d in dims):
                dynamic.setdefault(tuple(dims), (tensor, tuple(range(start, start + width))))
        for start in range(len(fixed) - width + 1):
            dims = fixed[start:start + width]
            if all(isinstance(d, int) and d > 1 for d in dims):
                static.setdefault(tuple(dims), tensor.name)
                static.setdefault(tuple(dims[::-1]), tensor.name)
    return [(key, *where) for key, where in dynamic.items()], static


def _given(ctx) -> dict[str, int]:
    """The dynamic dims' export sizes from --trace-shape."""
    given: dict[str, int] = {}
    for tensor in ctx.graph.inputs:
        traced = ctx.options.trace_shapes.get(tensor.name)
        for axis, dim in enumerate(ctx.shape(tensor) or ()):
            if traced and isinstance(dim, str) and axis < len(traced):
                given.setdefault(dim, int(traced[axis]))
    return given


class _Solver:
    """Where each dim expression equals a value: a range of its one free dim (the others fixed), cached."""

    def __init__(self, given: dict[str, int]):
        self.given = given
        self.cache: dict[tuple, dict | None] = {}

    def at(self, expr, sym, n: int) -> int | None:
        out = expr.xreplace({sym: sympy.Integer(n)})
        return int(out) if out.is_Integer else None

    def span(self, expr, value: int) -> dict[str, tuple[int, int]] | None:
        key = (expr, value)
        if key not in self.cache:
            self.cache[key] = self._span(expr, value)
        return self.cache[key]

    def _span(self, expr, value: int) -> dict[str, tuple[int, int]] | None:
        pinned = {s: sympy.Integer(self.given[s.name]) for s in expr.free_symbols if s.name in self.given}
        expr = expr.xreplace(pinned)
        free = sorted(expr.free_symbols, key=str)
        if not free:
            return {s.name: (int(v), int(v)) for s, v in pinned.items()} if expr == value else None
        if len(free) > 1:
            return None  # an area, a sum of levels: not one dim's size
        sym = free[0]
        lo, hi = self._bounds(expr, sym, value) or (1, 0)
        if lo > hi or self.at(expr, sym, lo) != value or self.at(expr, sym, hi) != value:
            return None  # a size grows with the input: where it does not, nothing is read from it
        span = {s.name: (int(v), int(v)) for s, v in pinned.items()}
        span[sym.name] = (lo, hi)
        return span

    def _bounds(self, expr, sym, value: int) -> tuple[int, int] | None:
        """The sizes in [1, SEARCH] between the first at which `expr` reaches `value` and the last at which it does
        not pass it (bisected: a size grows with the input); None where the expression is no integer at a size it
        meets (a Reshape's exact H / 2 at an odd H)."""

        def key(n: int) -> int:
            got = self.at(expr, sym, n)
            if got is None:
                raise _NotInteger
            return got

        sizes = range(1, SEARCH + 1)
        try:
            first, past = bisect.bisect_left(sizes, value, key=key), bisect.bisect_right(sizes, value, key=key)
        except _NotInteger:
            return None
        return sizes[min(first, SEARCH - 1)], past  # past: the count of sizes not above `value`, so the last one


class _NotInteger(Exception):
    """An expression met a size at which it is no integer."""


def _meet(domain: dict, span: dict) -> dict | None:
    out = dict(domain)
    for sym, (lo, hi) in span.items():
        a, b = out.get(sym, (1, SEARCH))
        if max(a, lo) > min(b, hi):
            return None
        out[sym] = (max(a, lo), min(b, hi))
    return out


def _solutions(rows: list[tuple[int, ...]], keys: list, solver: _Solver) -> list[tuple[list, dict, list, int]]:
    """Each way to give every row a run of dims at one export size, read alike in every row: one order for all
    rows, the same dynamic dims at each position (the width of every level, then its height), and the same offset
    (the sizes themselves, or each less 1: `[W - 1, H - 1]`, helper 85)."""
    found: list[tuple[list, dict, list, int]] = []
    for offset in OFFSETS:
        shifted = [(tuple(e - offset for e in key), tensor, axes) for key, tensor, axes in keys]
        walked: list[tuple[list, dict, list]] = []
        for flip in (False, True):
            _walk(rows, shifted, solver, flip, [], {}, [], walked)
        found += [(*f, offset) for f in walked]
    return found


def _walk(rows, keys, solver: _Solver, flip: bool, chosen: list, domain: dict, constrained: list,
          found: list) -> None:
    if len(found) >= MAX_SOLUTIONS:
        return
    r = len(chosen)
    if r == len(rows):
        found.append((list(chosen), domain, list(constrained)))
        return
    for key, tensor, axes in keys:
        exprs = key[::-1] if flip else key
        if chosen and [e.free_symbols for e in exprs] != [e.free_symbols for e in chosen[0][1]]:
            continue  # the first row's height here, another's batch: not one set
        here = domain
        for expr, v in zip(exprs, rows[r], strict=True):
            span = solver.span(expr, v)
            here = None if span is None else _meet(here, span)
            if here is None:
                break
        if here is not None:
            chosen.append((key, exprs, tensor, axes[::-1] if flip else axes))
            constrained.append({s.name for e in exprs for s in e.free_symbols})
            _walk(rows, keys, solver, flip, chosen, here, constrained, found)
            chosen.pop()
            constrained.pop()


def size_sets(ctx) -> Iterator[SizeSet | str]:
    """The constants whose rows are a matched set of the graph's sizes at the export size (or why one was not)."""
    candidates = list(_candidates(ctx))
    if not candidates:
        return  # the size analysis is only paid for where such a constant is read
    given = _given(ctx)
    solver = _Solver(given)
    keys: dict[int, list] = {}
    fixed: dict[int, dict] = {}
    for node, index, const, value, width in candidates:
        if width not in keys:
            keys[width], fixed[width] = _runs(ctx, width)
        rows = [tuple(int(v) for v in row) for row in value.reshape(-1, width)]
        if all(row in fixed[width] for row in rows):  # helper 85: SSD resizes to a fixed 256 by 320, reads it back
            held = ", ".join(f"{list(row)} of '{fixed[width][row]}'" for row in rows)
            yield (f"'{const.name}' {list(value.shape)} read by '{node.name}': its rows are also fixed sizes the "
                   f"graph holds at every input size ({held})")
            continue
        found = _solutions(rows, keys[width], solver)
        if not found:
            continue  # its rows are no sizes of the graph: a model's own numbers
        distinct = {tuple(tuple(str(e) for e in c[1]) for c in chosen): (chosen, domain, constrained, offset)
                    for chosen, domain, constrained, offset in found}
        # the sizes themselves before sizes less 1, then the largest export size first: where none is given, the
        # deepest levels a graph computes are the ones a model reads again (the input itself and its first strided
        # maps match a pyramid at a smaller size)
        ranked = sorted(distinct.values(), key=lambda f: (f[3], -sum(hi for _, hi in f[1].values())))
        chosen, domain, constrained, offset = ranked[0]
        is_given = all(s in given for s in domain)
        if why := _refused(rows, [c[0] for c in chosen], domain, constrained, is_given):
            yield f"'{const.name}' {list(value.shape)} read by '{node.name}' holds sizes of the graph, but {why}"
            continue
        others = [[c[1] for c in other] for other, *_ in ranked[1:]]
        yield SizeSet(node, index, const, value, [(c[2], c[3]) for c in chosen], [c[1] for c in chosen],
                      dict(sorted(domain.items())), is_given, others, offset)


def _refused(rows: list[tuple[int, ...]], keys: list, domain: dict, constrained: list[set], given: bool) -> str:
    """Why a match is no evidence ("" where it is)."""
    if given:  # one square row (a 4 by 4 map, anchors' stride 4) is as likely a coincidence at a given size
        square = len(set(rows)) < 2 and all(len(set(row)) == 1 for row in rows)
        return "its one row is square and may equal a map's sizes by coincidence" if square else ""
    if len({str(key) for key in keys}) < 2:
        return "its rows are one tensor's sizes, and no --trace-shape says the export size"
    if all(len(set(row)) == 1 for row in rows):
        return "every row is square: which is the height is not told (give --trace-shape)"
    loose = [s for s in domain if sum(s in names for names in constrained) < 2]
    if loose:
        return f"{', '.join(loose)} is constrained by one row only (give --trace-shape)"
    return ""


def rebuilt(found: SizeSet, opset: int):
    """Fix closure: the constant computed at run time from Shape ops of the tensors its rows are the sizes of."""
    node, index, value = found.node, found.index, found.value

    def apply(graph: gs.Graph) -> None:
        b = Builder(graph, f"{node.name}_gf006_sizes", opset)
        entries = [(tensor, axis) for tensor, axes in found.carriers for axis in axes]
        vector = b.vector(entries)
        if found.offset:
            vector = b.op("Sub", [vector, b.const([found.offset])])
        cast = b.op("Cast", [vector], {"to": onnx_type(value.dtype)}, dtype=value.dtype)
        node.inputs[index] = b.op("Reshape", [cast, b.const(list(value.shape))], dtype=value.dtype)

    return apply
