"""Slices that cut a length from 0 to a constant equal to that length at export: a no-op at the export size, a
truncation at every longer input.

A length computed in Python while tracing and used as a slice end (`x[:, :int(round(lens[0] * x.shape[1]))]`,
speechbrain's StatisticsPooling at relative length 1.0) is frozen at the export length. Nothing downstream needs
the cut length to match another size, so no constraint breaks (graphfix.analysis.sizes.solve's `baked_slices`
finds nothing) and the graph runs at every length: longer inputs silently lose their tail. Only the export length
shows it, so the cut is read against what the graph and the user say of it (graphfix.analysis.export_sizes'
`export_facts`: `--trace-shape`, or a constraint that holds at one size only). A model that keeps the first c
frames on purpose and was exported at exactly c frames gives the same graph: `ExportLengthCut` says it is a
match, not which of the two it is.

    for cut in export_length_cuts(sizes, export_facts(ctx)): ...   # Slice '/pool/Slice' ends at 50 = t at export
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from graphfix.analysis.sizes.arith import same
from graphfix.analysis.sizes.core import Sizes
from graphfix.core.lazy import sympy  # imported on first use: see graphfix.core.lazy


@dataclass
class ExportLengthCut:
    """Slice `node` cuts axis `axis`, `length` long (an expression of the input dims), at the constant `end`, which
    `length` was at export (`why`: the facts that say so), or at a length whose export value nothing says (`why`
    empty): then the end may be the export length, or the model's own number."""

    node: gs.Node
    axis: int
    length: sympy.Expr
    end: int
    why: str = ""
    size: str = ""  # the input dim whose export size the end is, where the length was longer then (a crop)

    @property
    def known(self) -> bool:
        return bool(self.why)


def export_length_cuts(sizes: Sizes, facts: Callable[[], Iterable],
                       cuts: Iterable[tuple[gs.Node, int, int]]) -> Iterator[ExportLengthCut]:
    """Each of `cuts` (Slice, axis, end: `constant_cuts`) whose length is an expression of the input dims and equal
    to the end at export, or whose length's export value is not known, in graph order. `facts` gives
    graphfix.analysis.export_sizes.ExportFacts, asked once a cut meets a length (they may run onnxruntime's
    symbolic inference). Only the cuts onnx's inference leaves open reach the analysis' shapes, which cost its
    whole pass, sympy's (a Llama's rotary half-splits cut fixed head dims)."""
    known: tuple | None = None
    for node, axis, end in cuts:
        shape = sizes.shape(node.inputs[0])
        length = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
        if length is None or not length.free_symbols:
            continue  # a fixed axis: a cut of features, or of a length already baked (GF004's)
        known = tuple(facts()) if known is None else known
        exported = at_export(length, known)
        if exported is None:
            yield ExportLengthCut(node, axis % len(shape), length, end)
        elif exported[0] == end:
            yield ExportLengthCut(node, axis % len(shape), length, end, exported[1])
        elif exported[0] > end and (size := _cropped_to(length, end, known)) is not None:
            yield ExportLengthCut(node, axis % len(shape), length, end, size.show(end), size.dim)


def _cropped_to(length: sympy.Expr, end: int, facts: tuple):
    """The one fact of an input dim the length grows with whose export size is `end`: a pad then a crop back to the
    input's length (`F.pad(x, (0, int(T) % 8))[:, :int(T)]`, helper 133), which the graph keeps at its export
    value at every size. Where the rest of the length is `end` too, a model's own crop (a pad by N then the first N
    kept, Whisper's pad-or-trim; N prefix tokens then those N, helper 136) exported at T = N gives the graph of
    `F.pad(x, (0, int(T)))[:, :int(T)]` (helper 137): the same match, which the message says."""
    symbols = {symbol.name: symbol for symbol in length.free_symbols}
    found = [f for f in facts if f.length is None and f.value == end and f.dim in symbols
             and length.diff(symbols[f.dim]).is_positive]
    return found[0] if len(found) == 1 else None


def constant_cuts(node: gs.Node, constant, shape) -> list[tuple[gs.Node, int, int]]:
    """(node, axis, end) for each axis the Slice `node` cuts from 0 to a whole constant end > 1 with step 1 (no step
    given is 1), along an axis onnx's inference does not fix (`constant`, `shape`: the rule context's readers of
    values and inferred shapes; an unknown shape leaves every axis open): the whole slice is a no-op at that length.
    A later start cuts at export (`x[:, t:t + 1]`, the last step of an unrolled loop, ends at the length: GF009's),
    and a model reading to the end writes `x[:, k:]`."""
    if node.op != "Slice" or len(node.inputs) < 3:
        return []
    starts, ends, dims = constant(node.inputs[1]), constant(node.inputs[2]), shape(node.inputs[0])
    given = [constant(node.inputs[k]) if len(node.inputs) > k and node.inputs[k].name else None for k in (3, 4)]
    if starts is None or ends is None or starts.size != ends.size:
        return []
    axes = range(ends.size) if given[0] is None else given[0].ravel().tolist()
    steps = [1] * ends.size if given[1] is None else given[1].ravel().tolist()
    if not len(axes) == len(steps) == ends.size:
        return []
    return [(node, int(axis), int(end)) for start, end, axis, step in
            zip(starts.ravel().tolist(), ends.ravel().tolist(), axes, steps, strict=True)
            if start == 0 and step == 1 and end > 1 and (dims is None or (
                -len(dims) <= int(axis) < len(dims) and not isinstance(dims[int(axis)], int)))]


def at_export(length: sympy.Expr, facts: tuple) -> tuple[int, str] | None:
    """The length's export value and the facts that give it: every dim it reads given a size, or the length
    itself one a constraint solves (a strided front end's `floor(T/2) - 1`)."""
    for fact in facts:
        if fact.length is not None and same(fact.length, length):
            return fact.value, f"{fact.dim}'s {fact.length} = {fact.value} at export ({fact.source})"
    given = {f.dim: f for f in facts if f.length is None}
    if not all(s.name in given for s in length.free_symbols):
        return None
    value = sympy.sympify(length.xreplace({s: sympy.Integer(given[s.name].value) for s in length.free_symbols}))
    if not getattr(value, "is_Integer", False):
        return None
    return int(value), "; ".join(given[s.name].show(given[s.name].value) for s in
                                 sorted(length.free_symbols, key=lambda s: s.name))
