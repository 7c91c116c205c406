"""Which entries of a constant shape input are export-time sizes of the graph inputs' dynamic dims, and what each
becomes at run time: a Reshape's or an Expand's target shape, a Slice's ends, ConstantOfShape's shape, Tile's
repeats, Range's limit, Resize's sizes (GF004's detection). For a Reshape whose element count the size analysis
solves, `reshape_candidates` lists the entries that could stand for the size it pins.

A replaced entry is an int (0 copies the input's dim in a Reshape, 1 keeps it in an Expand, an end relative to the
end in a Slice) or `(tensor, axis)`, a dim read at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.edits import size_expr
from graphfix.analysis.export_sizes import ExportSizes, carriers_of, match_fixed_count, regroups_static_trailing_dims
from graphfix.analysis.frozen_identities import frozen_identities, sized_pools, upstream_nodes
from graphfix.analysis.sizes import baked_reshapes, caps, determined_entries, frozen_by_other_entries, sizes_of
from graphfix.analysis.sizes.arith import same
from graphfix.analysis.sizes.ops import is_table
from graphfix.core.lazy import hypotheses, sympy  # imported on first use: see graphfix.core.lazy

INT64_MAX = np.iinfo(np.int64).max
# a constant equal to a given (--trace-shape) size that no constraint pins: a coincidence is as likely as a bake
BY_VALUE = ("the export size of {dims} is given, not solved: no constraint of the graph pins it, so the constant "
            "may be a model size that equals it at export (rewriting a healthy reshape or slice changes its output)")


@dataclass
class Entries:
    """A constant shape input with each entry that is an export size replaced, and what tells it."""

    entries: list  # the new entries: ints, or (tensor, axis) read at run time
    notes: list[str] = field(default_factory=list)  # which entry is which size, in words
    unsafe: list[str] = field(default_factory=list)  # why a replacement may be wrong
    doubt: bool = False  # a replaced entry only equals a given or guessed size: it may be the model's own
    unmatched: list[str] = field(default_factory=list)  # dynamic dims a fixed element count leaves unexplained
    rejected: list[str] = field(default_factory=list)  # why entries that might be sizes were left, in order
    otherwise: str = ""  # the reason of a fix that nothing doubts

    @property
    def reason(self) -> str:
        """Why the replacement may be wrong, or why it is right (a fix's reason)."""
        return "; ".join(self.unsafe) or self.otherwise


def constant_target(ev, node: gs.Node) -> list[int] | None:
    """The shape input of a Reshape or an Expand as ints, where it is a constant (only those can be baked)."""
    target = ev(node.inputs[1])
    return None if target is None else [int(t) for t in target.reshape(-1)]


def reshape_entries(sizes: ExportSizes, data: gs.Tensor, shape: list, target: list[int],
                    allowzero: int, output: gs.Tensor | None = None) -> Entries | None:
    """The entries of `Reshape(data[shape], target)` that are export sizes of `data`'s dynamic dims; None where
    `data` has no dim of a graph input (only those have export-time sizes to compare with). `output`: the
    Reshape's, whose readers may hold axes at one size (`fixed_by_readers`)."""
    syms = {i: d for i, d in enumerate(shape) if isinstance(d, str) and d in sizes.carriers}
    if not syms:
        return None
    entries: list[int | tuple[gs.Tensor, int]] = list(target)
    notes, guessed, given, unsafe = [], [], [], []
    matched: set[str] = set()
    for j, t in enumerate(target):
        sym = syms.get(j)
        if sym is None or t <= 0:
            continue
        if sym in sizes.values and sizes.values[sym] == t:
            entries[j] = 0 if allowzero == 0 else (data, j)
            matched.add(sym)
            if sizes.is_solved(sym):
                notes.append(f"entry {j} = {t} is {sizes.explain(sym)}")
                continue
            # a given size that no constraint pins: [2, -1, 4] runs at every B, the 2 may be the model's own
            notes.append(f"entry {j} = {t} equals {sizes.explain(sym)}, which no constraint of the graph pins")
            given.append(sym)
        elif regroups_static_trailing_dims(shape, target, j):
            continue  # [B, T, 32] -> [-1, 32]: the entry is the input's own trailing static dim, not a size
        elif sym not in sizes.values and -1 in target and all(isinstance(e, int) and e != 0 for e in entries[:j]):
            # nothing else tells the export size: the constant at the dim's own position is the best guess
            entries[j] = 0 if allowzero == 0 else (data, j)
            notes.append(f"entry {j} = {t} sits where dynamic dim {sym} is (its export size is not known)")
            guessed.append(sym)
            matched.add(sym)
    rest = [(i, s) for i, s in syms.items() if s not in matched]
    if rest and -1 not in target and 0 not in target:
        # element count is fixed while the input's varies: find which entries stand for which dims
        rest = match_fixed_count(sizes, data, target, entries, syms, rest, notes, unsafe)
        if rest and output is not None and not any(s in sizes.values for _, s in rest) and shape \
                and isinstance(shape[-1], int) and shape[-1] == target[-1]:  # the input's own trailing features
            rest = _one_entry_left(target, entries, fixed_by_readers(output, len(target)), rest, notes)
        if rest:
            return Entries(entries, notes, unsafe, unmatched=[s for _, s in rest])
    if guessed:
        unsafe.append(f"export size of {', '.join(guessed)} guessed from the constant; confirm with --trace-shape")
    if given:
        unsafe.append(BY_VALUE.format(dims=", ".join(given)))
    # an error needs a solved constraint: an entry that only equals an export size may be meant
    return Entries(entries, notes, unsafe, doubt=bool(guessed or given),
                   otherwise="each replaced entry is the export size of the input's dynamic dim there")


def fixed_by_readers(output: gs.Tensor, rank: int) -> set[int]:
    """The axes of a tensor that its readers hold at one size at every size: the contracted axis of a MatMul or
    Gemm with constant weights, the normalized last axis of a LayerNormalization."""
    held = set()
    for reader in output.outputs:
        if reader.op == "MatMul" and reader.inputs[0] is output and is_table(reader.inputs[1]):
            held.add(rank - 1)
        elif reader.op == "Gemm" and reader.inputs[0] is output and is_table(reader.inputs[1]):
            held.add(0 if reader.attrs.get("transA", 0) else rank - 1)
        elif reader.op == "LayerNormalization" and reader.inputs[0] is output \
                and int(reader.attrs.get("axis", -1)) in (-1, rank - 1):
            held.add(rank - 1)
    return held


def _one_entry_left(target: list[int], entries: list, held: set[int], rest: list[tuple[int, str]],
                    notes: list[str]) -> list[tuple[int, str]]:
    """A fixed element count over dims whose export sizes nothing tells (`reshape(int(B) * int(T), D)`, whose 24
    is 2 * 12 or 3 * 8): where the readers hold every other constant entry at one size (a Linear's D) and the last
    is the input's own static trailing dim (the caller's), the one left takes what the input's count leaves, -1,
    whatever the export sizes were. Not a last entry a weight cut at the export length holds (helper 123: token
    mixing `x.reshape(int(B) * C, int(T)) @ W[:int(T)]`, an instance norm `layer_norm(x.reshape(B * C, T), (T,))`).
    Returns the dims left unexplained (all of `rest`, or none)."""
    free = [j for j, e in enumerate(entries) if isinstance(e, int) and e > 0 and j not in held]
    if len(free) != 1 or len(target) - 1 not in held:
        return rest
    entries[free[0]] = -1
    notes.append(f"entry {free[0]} = {target[free[0]]} is what {' * '.join(s for _, s in rest)} give at export "
                 "(the other entries are held at one size by the readers)")
    return []


def expand_entries(sizes: ExportSizes, shape: list, target: list[int]) -> Entries:
    """The entries of `Expand(x[shape], target)` that are export sizes: of x's own dim there (1 keeps it), or,
    where x has 1, equal to the size of one graph input's dim (linked by value only)."""
    offset = len(target) - len(shape)
    entries: list[int | tuple[gs.Tensor, int]] = list(target)
    notes, by_value, given_only, unsafe = [], [], [], []
    for j, t in enumerate(target):
        i = j - offset
        dim = shape[i] if i >= 0 else 1
        if t <= 1:
            continue
        if isinstance(dim, str) and sizes.values.get(dim) == t:
            entries[j] = 1  # Expand keeps the input's dim where the shape says 1
            notes.append(f"entry {j} = {t} is {sizes.explain(dim)}")
            if not sizes.from_the_graph(dim):  # `x[:, :1].expand(-1, int(T), -1)`: 1 there, broadcast to T
                unsafe.append(f"only an Expand says {dim} was {t} at export: the input may have had 1 there")
        elif dim == 1 and len(cands := carriers_of(sizes, t)) == 1:
            entries[j] = sizes.carriers[cands[0]]
            by_value.append(f"entry {j} = {t} equals {sizes.explain(cands[0])}")
            given_only.append(not sizes.is_solved(cands[0]))
    unsafe += ["the expanded dim is linked to the graph input by value only"] if by_value else []
    # a new axis that only equals a size given with --trace-shape may be the model's own (a repeat count)
    return Entries(entries, notes + by_value, unsafe, doubt=bool(by_value) and all(given_only) and not notes,
                   otherwise="the input carries the dynamic dim at each replaced position; 1 keeps it")


def slice_ends(ctx, sizes: ExportSizes, shape: list, values: list[np.ndarray]) -> Entries:
    """The ends of a Slice of `x[shape]` (`values`: its starts, ends, axes, steps) that are export sizes of x's
    dynamic dims, as ends relative to the end (`entries`: every end)."""
    starts, ends = values[0].reshape(-1), values[1].reshape(-1).copy()
    axes = values[2].reshape(-1) if len(values) > 2 else np.arange(len(starts))
    steps = values[3].reshape(-1) if len(values) > 3 else np.ones(len(starts), dtype=np.int64)
    notes, unsafe, rejected = [], [], []
    for k, axis in enumerate(axes):
        dim = shape[int(axis) % len(shape)]
        if not isinstance(dim, str) or steps[k] <= 0:
            continue
        if ends[k] < 0 or ends[k] >= np.iinfo(np.int32).max:
            continue  # an open or end-relative end bakes nothing (and needs no export size)
        if dim not in sizes.carriers:
            continue  # not a graph input's dim: no export size to compare with
        if dim not in sizes.values:
            rejected.append(f"Slice on dynamic dim {dim}: its export size is unknown (give --trace-shape)")
            continue
        size = sizes.values[dim]
        if ends[k] == size:
            ends[k] = INT64_MAX
            notes.append(f"end {size} on axis {int(axis)} is {sizes.explain(dim)}")
            if not sizes.is_solved(dim):
                unsafe.append(BY_VALUE.format(dims=dim))
            elif not any(c.symbol.name == dim and c.limit == size for c in caps(sizes_of(ctx))):
                # hypotheses: the end is the dim (to the end) or the model's own length; only a consumer that
                # needs the slice to follow the dim past the export size (`Min(T, 8) == T`) tells them apart
                unsafe.append(f"the end is {dim} (to the end) or a fixed length {size} of the model: nothing "
                              f"downstream needs the slice to follow {dim}")
            if len(sizes.symbols_with(size)) > 1:
                unsafe.append(f"another dynamic dim also had size {size}: `x[:, :y.shape[1]]` may be meant")
        elif 0 < size - ends[k] <= ends[k] and 0 <= starts[k] < ends[k]:  # `x[:, :1]` of 7 is no `T - 6`
            notes.append(f"end {int(ends[k])} on axis {int(axis)} is {sizes.explain(dim)} minus "
                         f"{size - int(ends[k])}")
            unsafe.append("the end may be a deliberate fixed length rather than `n - k`")
            ends[k] = int(ends[k]) - size
    return Entries(ends, notes, unsafe, rejected=rejected,
                   otherwise="the end was the full length of the sliced dynamic dim")


def value_entries(sizes: ExportSizes, value: np.ndarray, flat: list[int]) -> Entries:
    """The entries of a constant shape, repeats, limit or sizes (`value`, as the ints `flat`) that equal the
    export size of exactly one graph input's dim: linked to it by value only."""
    entries: list[int | tuple[gs.Tensor, int]] = list(flat)
    notes, rejected = [], []
    for j, v in enumerate(flat):
        cands = carriers_of(sizes, v) if v > 1 and v == value.reshape(-1)[j] else []
        if len(cands) == 1:
            entries[j] = sizes.carriers[cands[0]]
            notes.append(f"{v} equals {sizes.explain(cands[0])}")
        elif len(cands) > 1:
            rejected.append(f"{v} matches several dynamic dims ({', '.join(cands)})")
    return Entries(entries, notes, rejected=rejected)


def rounded_pads(sizes: ExportSizes, shape: list, pads: np.ndarray) -> list[tuple[int, str, int, int | None]]:
    """(axis, dim, amount, multiple) for each dynamic dim of a known export size that a Pad of `x[shape]` pads by a
    constant amount: the power of two the padded export size is a multiple of (`math.ceil` on a size in Python),
    None where it rounds to none (a pad unrelated to the size, conv padding)."""
    found = []
    for axis, dim in enumerate(shape):
        amount = int(pads[axis] + pads[axis + len(shape)])
        if not isinstance(dim, str) or amount <= 0 or dim not in sizes.values:
            continue
        padded = sizes.values[dim] + amount
        multiple = next((m for m in (2 ** k for k in range(1, 13)) if m > amount and padded % m == 0), None)
        found.append((axis, dim, amount, multiple))
    return found


@dataclass
class Candidates:
    """The entries of a partly constant Reshape shape that could stand for the size its element count pins."""

    left: list  # the entries the graph's constraints leave (graphfix.analysis.hypotheses)
    wrong: list  # entries the analysis proposes that they do not leave: nothing is repaired
    entries: list = field(default_factory=list)  # the rebuildable ones (only the one chosen in a trial of repair)
    trial: bool = False  # one of repair's trials (see Choice): the proof judges it
    doubt: str = ""  # where one entry is left: why it may still be wrong

    def reason(self) -> str:
        """The reason of the fix that rebuilds the one entry left."""
        entry = self.entries[0]
        return (f"the element count says entry {entry.index} is {entry.expr}, but {self.doubt}" if self.doubt else
                "the one candidate the proof accepted (repair's trial)" if self.trial else
                f"solved from the element count: entry {entry.index} is {entry.expr} at every size")


def reshape_candidates(sizes, baked, choice: int | None) -> Candidates:
    """The candidates for `baked` (a BakedReshape), the proposal checked against the hypotheses the graph's
    constraints leave, recomputed; `choice`: the entry repair's trial applies (ctx.options.choices)."""
    node, data = baked.node, baked.node.inputs[0]
    left = determined_entries(sizes, baked)
    wrong = [e for e in baked.entries if not any(d.index == e.index and same(d.expr, e.expr) for d in left)]
    if wrong:
        return Candidates(left, wrong)
    entries = [e for e in baked.entries if size_expr(None, sizes, e.expr, data)]
    entries += [d for d in left if not any(d.index == e.index for e in baked.entries)
                and size_expr(None, sizes, d.expr, data)]
    chosen = [e for e in entries if e.index == choice]
    trial = len(entries) > 1 and bool(chosen)
    entries = chosen if trial else entries
    if len(entries) != 1:  # none rebuildable, or several that fit: the proof chooses, if one alone passes
        return Candidates(left, wrong, entries, trial)
    entry = entries[0]
    # a declared dim disagrees
    doubt = "; ".join(f.why for f in frozen_by_other_entries(sizes, node, entry.index)[:2])
    if len(entry.expr.atoms(sympy.floor, sympy.Min, sympy.Max)) > 1:  # the token count of a grid (helper 112)
        doubt = "; ".join(filter(None, [doubt, f"{entry.value} is the token count of a grid of lengths at export, "
                                        "and a model keeping that many slots or cells whatever the grid (a pad, a "
                                        "pool or a repeat sized in Python on the way) leaves the same graph"]))
    upstream = upstream_nodes(data)
    if identities := frozen_identities(upstream, sizes.constant):  # a size computed in Python, 0 or 1 at export
        doubt = "; ".join(filter(None, [doubt, f"{identities[0].op} '{identities[0].name}' before it does nothing "
                                        "by its constants, as a size computed in Python leaves it at the export "
                                        f"size: {entry.value} may be the model's own, which that op reaches at "
                                        "other sizes"]))
    elif pools := sized_pools(upstream):  # a pool's kernel may be sized in Python to keep a count (no weights to tell)
        doubt = "; ".join(filter(None, [doubt, f"{pools[0].op} '{pools[0].name}' before it sets a length by its "
                                        "kernel alone, which a kernel sized in Python to keep a count leaves as "
                                        f"well: {entry.value} may be the model's own"]))
    if entry.others:  # several expressions fit the same entry: the graph does not say which
        doubt = "; ".join(filter(None, [doubt, f"{hypotheses.show(entry.expr)} (applied, the simplest) or "
                                        + " or ".join(hypotheses.show(o) for o in entry.others) + " fits the element "
                                        "count as well: they differ at other sizes and the graph does not say which"]))
    return Candidates(left, wrong, entries, trial, doubt)


def solved_entries(sizes, choices: dict[str, int]):
    """(node, input slot, entry, export value, expression) of each baked Reshape entry the size analysis solves
    with one candidate expression, or the one repair chose (`choices`); none while ambiguous (Rule.baked_entries)."""
    for baked in baked_reshapes(sizes):
        chosen = [e for e in baked.entries if e.index == choices[baked.node.name]] if baked.node.name in choices \
            else baked.entries if len(baked.entries) == 1 else []
        yield from ((baked.node, 1, e.index, e.value, e.expr) for e in chosen)


def entry_text(entry) -> str:
    return f"entry {entry.index} ({entry.value} = {hypotheses.show(entry.expr)})"
