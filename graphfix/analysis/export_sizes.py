"""Export-time sizes of dynamic dims: from `--trace-shape`, or from the evidence the graph carries.

A Reshape that conserves elements at one size only, an Expand or an elementwise op that meets a dynamic dim with a
constant one, Split sizes, and onnxruntime's symbolic inference merging a dynamic dim with a constant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.broadcast import BROADCAST_OPS, batch_named
from graphfix.analysis.constants import Evaluator, arange_axis
from graphfix.analysis.context import RuleContext


@dataclass
class ExportSizes:
    """Export-time values of dynamic dims (by dim name) and where each value was learnt.

    A value is *solved* when a constraint of the graph holds at that value only (an element count, a broadcast
    against a constant, Split sizes): the graph itself fails elsewhere. A value that is only *given*
    (`--trace-shape`) says what the export size was, not that a constant equal to it stands for it.

    The expensive sources (onnxruntime's symbolic inference) are deferred until a candidate first reads
    `values` (or asks `is_solved` of a given size): a graph with nothing that could be baked never pays for them."""

    _values: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    carriers: dict[str, tuple[gs.Tensor, int]] = field(default_factory=dict)  # dim name -> (graph input, axis)
    deferred: list[Callable[[ExportSizes], None]] = field(default_factory=list)
    solved: set[str] = field(default_factory=set)
    corroborate: list[Callable[[ExportSizes], None]] = field(default_factory=list)  # run for given-only sizes
    given: set[str] = field(default_factory=set)  # said by --trace-shape

    def from_the_graph(self, sym: str) -> bool:
        """Whether the graph's constraints or --trace-shape tell `sym`'s export size, not only an Expand to it
        (which holds at 1 too: the input may have had 1 there)."""
        return sym in self.given or self.is_solved(sym)

    @property
    def values(self) -> dict[str, int]:
        while self.deferred:
            self.deferred.pop(0)(self)
        return self._values

    def learn(self, sym: str, value: int, source: str, solved: bool = True) -> None:
        if value <= 0:
            return
        if sym not in self._values:
            self._values[sym], self.sources[sym] = int(value), source
        if solved and self._values[sym] == int(value):
            self.solved.add(sym)

    def is_solved(self, sym: str) -> bool:
        """Whether a constraint of the graph pins `sym` at its export value (not only --trace-shape)."""
        if sym in self.values and sym not in self.solved:
            while self.corroborate:
                self.corroborate.pop(0)(self)
        return sym in self.solved

    def symbols_with(self, value: int) -> list[str]:
        return [s for s, v in self.values.items() if v == value]

    def explain(self, sym: str) -> str:
        return f"{sym}={self.values[sym]} at export ({self.sources[sym]})"


def export_sizes(ctx: RuleContext, ev: Evaluator) -> ExportSizes:
    """Export-time sizes of the graph inputs' dynamic dims, from --trace-shape or the evidence in the graph."""
    sizes = ExportSizes()
    for tensor in ctx.graph.inputs:
        for axis, dim in enumerate(ctx.shape(tensor) or ()):
            if isinstance(dim, str):
                sizes.carriers.setdefault(dim, (tensor, axis))
        traced = ctx.options.trace_shapes.get(tensor.name)
        for axis, dim in enumerate(ctx.shape(tensor) or ()):
            if traced and isinstance(dim, str) and axis < len(traced):
                sizes.learn(dim, traced[axis], f"--trace-shape {tensor.name}", solved=False)
                sizes.given.add(dim)
    reshapes = []
    for node in ctx.graph.nodes:
        if node.op == "Reshape":
            reshapes.append(node)
        elif node.op == "Expand":
            _learn_aligned(sizes, ctx.shape(node.inputs[0]), ev(node.inputs[1]), f"Expand '{node.name}'")
        elif node.op == "Split" and (split := split_sizes(ev, node)) is not None:
            shape = ctx.shape(node.inputs[0])
            if shape and isinstance(dim := shape[int(node.attrs.get("axis", 0)) % len(shape)], str):
                sizes.learn(dim, sum(split), f"Split '{node.name}' sizes")
        elif node.op in BROADCAST_OPS:
            _learn_broadcast(sizes, [ctx.shape(t) for t in node.inputs],
                             f"{node.op} '{node.name}' broadcasts it with a fixed size")
    sizes.deferred.append(lambda s: _learn_from_symbolic(ctx, s, set(s._values)))
    sizes.deferred.append(lambda s: _learn_from_reshapes(ctx, ev, s, reshapes))
    sizes.corroborate.append(lambda s: _learn_from_symbolic(ctx, s, s.solved))
    return sizes


def _learn_from_reshapes(ctx: RuleContext, ev: Evaluator, sizes: ExportSizes, reshapes: list[gs.Node]) -> None:
    """A Reshape whose element count is conserved at one size only: that size is the export size."""
    for node in reshapes:
        shape, target = ctx.shape(node.inputs[0]), ev(node.inputs[1])
        if shape is None or target is None or (target <= 0).any():
            continue
        # solved sizes only: a given one (--trace-shape) does not make the element count pin another dim
        unknown = [d for d in shape if not isinstance(d, int) and d not in sizes.solved]
        if len(unknown) == 1 and isinstance(unknown[0], str) and shape.count(unknown[0]) == 1:
            known = math.prod(d if isinstance(d, int) else sizes._values[d] for d in shape if d != unknown[0])
            if known and int(np.prod(target)) % known == 0:
                sizes.learn(unknown[0], int(np.prod(target)) // known,
                            f"Reshape '{node.name}' conserves elements only there")


def _learn_broadcast(sizes: ExportSizes, shapes: list, source: str) -> None:
    """Each dynamic dim of an operand that meets, right-aligned, a fixed size > 1 in another operand: the op runs
    at that size only. Read axis by axis, in time linear in the operands' dims: pairing each operand with each
    other one cost a 12 KB `Sum` of one tensor 8000 times minutes and gigabytes. A dim takes the first size found
    at its axis (operands in order), and is solved where any size there equals its value."""
    fixed: dict[int, dict[int, None]] = {}  # axis from the right -> the sizes > 1 there, in operand order
    dynamic: dict[tuple[str, int], None] = {}  # (dim name, axis from the right), in operand order
    for shape in shapes:
        for j, dim in enumerate(reversed(shape or ()), 1):
            if isinstance(dim, str):
                dynamic[dim, j] = None
            elif isinstance(dim, int) and dim > 1:
                fixed.setdefault(j, {})[dim] = None
    for dim, j in dynamic:
        if j in fixed:
            sizes.learn(dim, next(iter(fixed[j])), source)
            if sizes._values[dim] in fixed[j]:
                sizes.learn(dim, sizes._values[dim], source)  # solved: a size here agrees with one learnt before


def _learn_aligned(sizes: ExportSizes, shape, target, source: str) -> None:
    if shape is None or target is None:
        return
    target = target.reshape(-1)
    for j in range(1, min(len(shape), len(target)) + 1):
        dim, t = shape[-j], int(target[-j])
        if isinstance(dim, str) and t > 1:
            sizes.learn(dim, t, source, solved=False)  # or the input had 1 there


def _learn_from_symbolic(ctx: RuleContext, sizes: ExportSizes, settled: set[str]) -> None:
    """A constraint of the size analysis that holds at one size only (an element count, two broadcast dims, a
    MatMul's inner dims): that size is the export size, solved."""
    dims = [d for t in ctx.graph.inputs for d in (ctx.shape(t) or ())]
    if not any(isinstance(d, str) and d not in settled for d in dims):
        return  # nothing left to learn about (known sizes when reading values, solved ones when corroborating)
    from graphfix.analysis.sizes import sizes_of, solve

    analysis = sizes_of(ctx)
    for constraint in analysis.constraints:
        solution = solve(constraint, analysis.solver)
        if solution is not None:
            sizes.learn(solution.symbol.name, solution.value,
                        f"{constraint.kind} at '{constraint.node.name}' holds only there")


def split_sizes(ev: Evaluator, node: gs.Node) -> list[int] | None:
    if len(node.inputs) > 1 and (node.inputs[1].name or isinstance(node.inputs[1], gs.Constant)):
        value = ev(node.inputs[1])
        return None if value is None else [int(v) for v in value.reshape(-1)]
    split = node.attrs.get("split")
    return None if split is None else [int(v) for v in split]


def regroups_static_trailing_dims(shape: list, target: list[int], j: int) -> bool:
    """True when target[j] belongs to a suffix of the target that only regroups the input's static trailing
    dims: [B, T, 32] -> [-1, 32] or [-1, 4, 8] (head split). Those entries are model sizes, not traced ones."""
    static_products = set()
    product = 1
    for dim in reversed(shape):
        if not isinstance(dim, int):
            break
        product *= dim
        static_products.add(product)
    product = 1
    for k in range(len(target) - 1, -1, -1):
        if target[k] <= 0:
            return False
        product *= target[k]
        if k <= j and product in static_products:
            return True
    return False


def input_dim_behind(ctx: RuleContext, sizes: ExportSizes, tensor: gs.Tensor, axis: int) -> str | None:
    """The expression of `tensor`'s dim at `axis` when it is computed from a graph input's dynamic dim (its own
    name, or the size analysis' expression naming one), else None: a dim the exporter merely left unnamed
    (`unk__238`) may be fixed in every valid run, like the per-image axis of a detector or four box coordinates."""
    from graphfix.analysis.sizes import sizes_of

    shape = ctx.shape(tensor) or []
    if axis < len(shape) and isinstance(shape[axis], str) and shape[axis] in sizes.carriers:
        return shape[axis]
    symbolic = sizes_of(ctx).shape(tensor)
    dim = symbolic[axis] if symbolic is not None and axis < len(symbolic) else None
    if dim is not None and {s.name for s in dim.free_symbols} & set(sizes.carriers):
        return str(dim)
    return None


def match_fixed_count(sizes: ExportSizes, data: gs.Tensor, target: list[int], entries: list, syms: dict[int, str],
                      rest: list[tuple[int, str]], notes: list[str], doubts: list[str]) -> list[tuple[int, str]]:
    """A constant Reshape target whose element count is fixed while the input `data` varies with the `rest` dims
    (axis, name): the entry that equals each one's export size (one entry only), else one entry equal to their
    product (-1). Rewrites `entries`, adds to `notes` and `doubts`; returns the dims no entry stands for."""
    rest = list(rest)
    for i, sym in rest[:]:
        hits = [j for j, t in enumerate(target) if sym in sizes.values and t == sizes.values[sym]
                and isinstance(entries[j], int) and entries[j] == t and j not in syms]
        if len(hits) == 1:
            entries[hits[0]] = (data, i)
            notes.append(f"entry {hits[0]} = {target[hits[0]]} is {sizes.explain(sym)}")
            if len(sizes.symbols_with(sizes.values[sym])) > 1:
                doubts.append(f"another dynamic dim also had size {sizes.values[sym]} at export")
            rest.remove((i, sym))
    if rest and all(s in sizes.values for _, s in rest):
        product = math.prod(sizes.values[s] for _, s in rest)
        hits = [j for j, e in enumerate(entries) if isinstance(e, int) and e == product]
        if len(hits) == 1:
            entries[hits[0]] = -1
            notes.append(f"entry {hits[0]} = {product} is the product of "
                         + " * ".join(sizes.explain(s) for _, s in rest))
            return []
    return rest


@dataclass(frozen=True)
class ExportFact:
    """The graph says input dim `dim` was `value` long at export (`length` None), or that a length derived from it
    through a floor, `length`, was (a strided Conv's frames, `floor(T/2) - 1` = 19), because of `source`."""

    dim: str
    value: int
    source: str
    length: Any = None  # a sympy expression of the dim's symbol

    def gives(self, size: int) -> bool:
        """Whether the dim at `size` agrees with the fact."""
        if self.length is None:
            return size == self.value
        (symbol,) = self.length.free_symbols
        return self.length.subs(symbol, size) == self.value

    def least(self, limit: int = 1 << 24) -> int | None:
        """The least dim size that gives the fact (a Conv front end's 39 frames: 400 samples), by bisection on a
        length nondecreasing in it (floors and caps of the size); None where none below `limit` does."""
        low, high = 1, 1
        while not self._reaches(high) and high <= limit:
            low, high = high + 1, high * 2
        while low < high:
            middle = (low + high) // 2
            low, high = (middle + 1, high) if not self._reaches(middle) else (low, middle)
        return low if self.gives(low) else None

    def _reaches(self, size: int) -> bool:
        return self.value <= size if self.length is None else \
            self.length.subs(next(iter(self.length.free_symbols)), size) >= self.value

    def show(self, size: int) -> str:
        if self.length is None:
            return f"{self.dim}={self.value} at export ({self.source})"
        return f"{self.dim}={size} gives the export's {self.length} = {self.value} ({self.source})"

    def near(self, size: int) -> str | None:
        """How `size` is one step from the dim's export size (`int(T) - 1`, `2 * int(T)`), in words; None where it
        is not (or the fact is a derived length's)."""
        if self.length is not None:
            return None
        steps = {self.value - 1: "- 1", self.value + 1: "+ 1", 2 * self.value: "* 2"}
        if self.value % 2 == 0 and self.value >= 4:
            steps.setdefault(self.value // 2, "/ 2")
        step = steps.get(size) if size > 1 else None
        return None if step is None else f"{size} = {self.dim} {step}, {self.show(size)}"


def export_facts(ctx: RuleContext) -> tuple[ExportFact, ...]:
    """What this graph says of its input dims' export sizes (each solved, or given with --trace-shape; and each
    length derived from one that a constraint solves), with what the graph before any fix said
    (`RuleOptions.exported`: a fix may have removed that evidence from this one)."""
    from graphfix.analysis.sizes import sizes_of, solve
    from graphfix.analysis.sizes.solve import solve_length

    known = export_sizes(ctx, ctx.evaluator)
    facts = [ExportFact(s, v, known.sources[s]) for s, v in known.values.items() if s in known.carriers]
    analysis = sizes_of(ctx)
    for constraint in analysis.constraints:
        solved = None if solve(constraint, analysis.solver) is not None else solve_length(constraint, analysis.solver)
        if solved is None or len(solved[1].free_symbols) != 1:
            continue
        solution, length = solved
        dim = next(iter(length.free_symbols)).name
        if dim in known.carriers and dim not in known.values:
            facts.append(ExportFact(dim, solution.value, f"{constraint.kind} at '{constraint.node.name}' holds only "
                                    "there", length))
    return tuple(dict.fromkeys([*facts, *ctx.options.exported]))


def sized_at_export(ctx: RuleContext, value: int, near: bool = False) -> list[str]:
    """Each input dim that the graph says was `value` long at export, with why (see `export_facts`); with `near`,
    also each whose export size is one step from `value` (`ExportFact.near`)."""
    facts = export_facts(ctx)
    found = [f.show(value) for f in facts if f.gives(value)]
    if near and not found:
        found = [said for f in facts if (said := f.near(value))]
    return list(dict.fromkeys(found))


def unknown_at_export(ctx: RuleContext) -> list[str]:
    """The graph inputs' dynamic lengths whose export size nothing in the graph tells (no `export_facts`): not a
    batch, which no model's length is taken for: a dim named like one among its input's (`broadcast.batch_named`),
    else its leading dim (`x_dynamic_axes_1`, `n`: helper 106). A length leads where a batch is named beside it
    (`[T, B, C]`, helper 105)."""
    told = {fact.dim for fact in export_facts(ctx)}
    batch, lengths = set(), set()  # a dim is a batch only where no input has it elsewhere (`mask[time]`: helper 107)
    for tensor in ctx.graph.inputs:
        dims = [d for d in tensor.shape or () if isinstance(d, str)]
        lead = tensor.shape[0] if tensor.shape and isinstance(tensor.shape[0], str) else None
        own = batch_named(dims) or ({lead} if lead else set())
        batch |= own
        lengths |= set(dims) - own
    return sorted(dim for dim in export_sizes(ctx, ctx.evaluator).carriers
                  if dim not in told and (dim not in batch or dim in lengths))


def length_at_export(ctx: RuleContext, tensor, axis: int, value: int) -> str:
    """Why axis `axis` of `tensor` was `value` long at export (see `export_facts`: `--trace-shape`, or a constraint
    that holds there only), or '' where nothing says so."""
    from graphfix.analysis.sizes import sizes_of
    from graphfix.analysis.sizes.cuts import at_export

    dims = sizes_of(ctx).shape(tensor)
    length = dims[axis] if dims is not None and axis < len(dims) else None
    found = at_export(length, export_facts(ctx)) if length is not None and length.free_symbols else None
    return found[1] if found is not None and found[0] == value else ""


def carriers_of(sizes: ExportSizes, value: int) -> list[str]:
    return [s for s in sizes.symbols_with(value) if s in sizes.carriers]


def show_entries(entries) -> str:
    return "[" + ", ".join(str(e) if isinstance(e, int) else f"{e[0].name}.shape[{e[1]}]" for e in entries) + "]"


def changed_values(target: list[int], entries) -> set[int]:
    return {t for t, e in zip(target, entries, strict=True) if not (isinstance(e, int) and e == t)}


@dataclass
class FoldedRange:
    """A Constant node holding arange(start, start + step * length, step): positions computed with Python ints
    while tracing and folded, so their number is fixed at export."""

    tensor: gs.Tensor
    start: int
    step: int
    length: int

    @property
    def export_length(self) -> int | None:
        """L for relative positions arange(L, -L, -1) (or arange(-L, L)), the usual shape of a folded position
        range: the length the model was traced at."""
        return abs(self.start) if self.length in (2 * abs(self.start), 2 * abs(self.start) + 1) else None

    def show(self) -> str:
        return f"arange({self.start}, {self.start + self.step * self.length}, {self.step})"

    def doubt(self, sym) -> str:
        """Why growing the positions with the length `sym` that cuts them is a guess past their count."""
        n = self.length
        return (f"positions 0, 1, ... only ever cut to the first {sym} (a table computed for {n} of them): up to {n} "
                "the repair computes what the original does; beyond it the same positions continuing is the simplest "
                f"(applied), but a module that computes positions for max(T, {n}) may also cap them there or change "
                f"its frequencies past {n} (dynamic NTK rotary scaling), and the graph does not say which")


def folded_ranges(ctx: RuleContext) -> list[FoldedRange]:
    """Constant nodes whose values step by +-1 along their one long axis (cheap: no size analysis)."""
    found = []
    for node in ctx.graph.nodes:
        if node.op != "Constant" or len(node.outputs) != 1:
            continue
        value = ctx.constant_value(node.outputs[0])
        if value is None or value.size < 4 or value.size > 65536 or not np.issubdtype(value.dtype, np.number):
            continue
        axes = [a for a, d in enumerate(value.shape) if d > 1]
        progression = arange_axis(value, axes)
        if progression is not None and abs(progression[1]) == 1 and float(progression[0]).is_integer():
            found.append(FoldedRange(node.outputs[0], int(progression[0]), int(progression[1]), value.size))
    return found
