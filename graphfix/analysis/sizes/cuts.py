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

    @property
    def known(self) -> bool:
        return bool(self.why)


def export_length_cuts(sizes: Sizes, facts: Callable[[], Iterable],
                       slices: Iterable[gs.Node]) -> Iterator[ExportLengthCut]:
    """Each axis one of `slices` cuts with a step of 1 at a constant end > 1 equal to its length at export, or at
    any such end where the length's export value is not known, in graph order. `facts` gives
    graphfix.analysis.export_sizes.ExportFacts, asked once a Slice cuts a length at a constant (they may run
    onnxruntime's symbolic inference). The caller passes only the Slices that may cut a length (`may_cut_a_length`):
    the analysis' shapes cost its whole pass, sympy's (a Llama's rotary half-splits cut fixed head dims)."""
    known: tuple | None = None
    for node in slices:
        if node.op != "Slice" or len(node.inputs) < 3:
            continue
        for axis, end in _constant_ends(sizes, node):
            shape = sizes.shape(node.inputs[0])
            length = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
            if length is None or not length.free_symbols:
                continue  # a fixed axis: a cut of features, or of a length already baked (GF004's)
            known = tuple(facts()) if known is None else known
            at_export = _at_export(length, known)
            if at_export is None:
                yield ExportLengthCut(node, axis % len(shape), length, end)
            elif at_export[0] == end:
                yield ExportLengthCut(node, axis % len(shape), length, end, at_export[1])


def _constant_ends(sizes: Sizes, node: gs.Node) -> Iterator[tuple[int, int]]:
    """(axis, end) for each axis the Slice cuts from 0 to a whole constant end > 1 with step 1 (no step given is 1):
    the whole slice is a no-op at that length. A later start cuts at export (`x[:, t:t + 1]`, the last step of an
    unrolled loop, ends at the length: GF009's), and a model reading to the end writes `x[:, k:]`."""
    starts, ends = _whole(sizes.value(node.inputs[1])), _whole(sizes.value(node.inputs[2]))
    if starts is None or ends is None:
        return
    axes = _whole(sizes.value(node.inputs[3])) if len(node.inputs) > 3 and node.inputs[3].name else \
        tuple(range(len(ends)))
    steps = _whole(sizes.value(node.inputs[4])) if len(node.inputs) > 4 and node.inputs[4].name else \
        (1,) * len(ends)
    if axes is None or steps is None or not len(axes) == len(steps) == len(ends) == len(starts):
        return
    yield from ((axis, end) for axis, start, end, step in zip(axes, starts, ends, steps, strict=True)
                if start == 0 and step == 1 and end > 1)


def _whole(value) -> tuple[int, ...] | None:
    """The value as whole numbers, None where any element is not one (a computed end is no constant)."""
    if value is None or not all(getattr(v, "is_Integer", isinstance(v, int)) for v in value):
        return None
    return tuple(int(v) for v in value)


def _at_export(length: sympy.Expr, facts: tuple) -> tuple[int, str] | None:
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


def may_cut_a_length(node: gs.Node, constant, shape) -> bool:
    """Whether the Slice `node` cuts from 0 at a constant end > 1 along an axis onnx's inference does not fix
    (`constant`, `shape`: the rule context's readers of values and inferred shapes), before any size analysis."""
    if node.op != "Slice" or len(node.inputs) < 3:
        return False
    starts, ends, dims = constant(node.inputs[1]), constant(node.inputs[2]), shape(node.inputs[0])
    if starts is None or ends is None or starts.size != ends.size:
        return False
    axes = constant(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
    axes = range(ends.size) if axes is None else axes.ravel().tolist()
    return any(start == 0 and end > 1 and (dims is None or not isinstance(dims[int(axis)], int))
               for start, end, axis in zip(starts.ravel().tolist(), ends.ravel().tolist(), axes, strict=False)
               if dims is None or -len(dims) <= int(axis) < len(dims))
