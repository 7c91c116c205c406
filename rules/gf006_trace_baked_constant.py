"""GF006 trace-baked-constant."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.constants import arange_axis
from graphfix.analysis.context import RuleContext
from graphfix.analysis.edits import (
    arange_input,
    band_input,
    in_turn,
    loosened,
    positions_at_least,
    set_constant,
    sinusoid_input,
    table_slice_input,
)
from graphfix.analysis.export_sizes import folded_ranges, length_at_export
from graphfix.analysis.pinned import Pinned, kept_because, pinned_operands, widening_constants
from graphfix.analysis.sinusoids import sinusoid_table
from graphfix.analysis.size_sets import SizeSet, rebuilt, size_sets
from graphfix.analysis.sizes import caps, sizes_of
from graphfix.analysis.structured import (
    Baked,
    baked_operands,
    band_pattern,
    expanded_constants,
    is_uniform,
    positions_cut_to_length,
    shrunk,
    table_prefix,
    tables,
)
from graphfix.analysis.table_cuts import rows_cut_at_a_length
from graphfix.core.lazy import bands  # imported on first use: see graphfix.core.lazy
from graphfix.core.rule import Finding, Fix, Rejection, Rule, Safety, Severity, known


class TraceBakedConstant(Rule):
    """Tables, masks and position ranges built with a Python int while tracing, folded to export-size constants.

    ## What it does
    Finds constant tensors whose extent along an axis is the export-time size of a dynamic dim they meet: a
    constant operand of an elementwise op or Where cut at the export length (`torch.ones(int(T))`,
    `torch.arange(int(T))`, a causal mask `torch.tril(torch.ones(int(T), int(T)))`, `torch.eye(int(T))`,
    `self.pe[:, :int(T)]`; uniform, the data of an Expand to a size: an RNN's initial state `zeros(L, int(B), H)`),
    and position ranges folded at the export length that cap how long an input may be
    (transformers FunnelModel's relative positions `arange(L, -L, -1)`, found from the size analysis' `Min(N, T)`
    constraints), and a constant whose width nothing meets where it is read but a Reshape or broadcast further on
    pins to one size (speechbrain's `length_to_mask(lengths)` takes its width from `lengths.max().item()`:
    `arange(40) < lengths[:, None]`, reshaped by attention to `[B, 1, 1, T]`; `graphfix.analysis.pinned`), and a
    float constant an arithmetic op reads whose rows are each the sizes of one tensor's adjacent dims at the export
    size (or each less 1, `[W - 1, H - 1]`), a matched set (DeformableDetr's `offset_normalizer`, each level's
    (width, height) folded to `[[12, 8], [6, 4], [3, 2]]` at 64x96: it broadcasts at every size and is wrong at
    each other one; `graphfix.analysis.size_sets`): with `--trace-shape`, or without it where two levels or more
    hold at one export size only the search finds. A constant whose content follows from its size is rebuilt at
    run time; the recognisers live in `graphfix.analysis.structured`.

    ## Why it breaks deployment
    The tracer runs the Python that builds such tensors once, at the export size, and stores the result. At any
    other size onnxruntime fails (`Attempting to broadcast an axis by a dimension other than 1`), or, where the
    constant is sliced or gathered with a traced size, returns values computed for the wrong length.

    ## Example
    ```python
    return x + torch.arange(int(x.shape[1]))   # baked: Add(x, [0, 1, ..., 6]); write torch.arange(x.shape[1])
    T = int(x.size(1)); scores.masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf"))  # bool [7, 7]
    ```
    Rebuilt, each from `Shape(x)[i]` of the tensor the constant meets (by default only where the fix is safe,
    see Fix safety; else with `--unsafe-fixes`, or by `graphfix.export` where the module agrees):
    - uniform along the baked axes (ones/zeros/full): shrunk to size 1 there (broadcasting restores it);
    - 0, 1, 2, ... along one axis (arange): `Range(0, Shape(x)[i])`;
    - the leading rows of a table still in the graph (`self.pe` also read elsewhere): `Slice(pe, 0, Shape(x)[i])`;
    - a mask over the last two axes (a mask's two values: 0/1, True/False, 0/-inf), square or with one side fixed
      like `tril(ones(T, 6))` over 6 memory slots: a triangle (tril/triu, any offset) as
      `Trilu(ConstantOfShape(...))`, a band (a sliding window, both edges inside the matrix) as two Trilu, then
      `Where` to the two values (opset >= 14);
    - a diagonal (eye): `EyeLike(ConstantOfShape(...))`, then the two values;
    - a sinusoidal position table cut at the export length, the rest gone (`self.pe[:, :int(T)]`): sines and
      cosines of the positions at a geometric series of frequencies (the Transformer's interleaved table,
      Whisper's and ESPnet's concatenated one, a rotary cos/sin cache), identified from the values, every entry
      checked (`graphfix.analysis.sinusoids`): `Sin`/`Cos` of `Range(0, Shape(x)[i])` times the frequencies;
    - positions 0, 1, ..., N-1 folded while a table is computed from them at run time, for more rows than the
      export length (speechbrain's RoPEMHA computes its rotary cache for the next power of two: 64 rows at 40
      frames) and cut to the length: `Range(0, max(N, Shape(x)[i]))`, each Reshape on the table's way taking -1
      where it held N. The graph runs only while T <= N; up to N the repair computes what the original does,
      past N what the simplest module would (unsafe, below).
    A whole sinusoidal table folded to N rows and cut to the length (a rotary cache kept as a buffer, computed while
    tracing and folded: `cos[: x.shape[1]]`, `cos[arange(T)]`; rows along any axis whose others but the columns are
    1, `[T, 1, 1, D]`; `graphfix.analysis.table_cuts`) is a note: the graph runs while T <= N, which may be the
    model's own maximum (`self.pe[:, : x.size(1)]` of 5000 rows is healthy); an error where the length was N at
    export (`--trace-shape`): a cache filled there (transformers' rotary caches, by a run before the export).
    `--unsafe-fixes` computes its rows as `Range(0, max(N, Shape(x)[i]))` of the same formula.

    ## Fix safety
    Safe where the constant determines the rebuild: uniform of 0 or 1 (True, False; but for what a mask holds where
    it lets everything through, below). Unsafe where several constructions give the same constant at the export
    size and differ elsewhere; the finding names them and `--unsafe-fixes` applies the simplest (`graphfix.export`
    applies it where the module agrees):
    - a triangle reaches the matrix's corner, so its far edge is not shown: `tril(ones(T, T))` traced at T=4 is
      also every sliding window `0 <= i - j < w` with w >= 4 (rebuilt as tril, it is wrong at every longer size);
    - a band or a diagonal with every edge inside the matrix is also a strided pattern (that position and every
      s-th one, `(i - j) % s == 0`: Sparse Transformer's heads, a seasonal graph's links) for any stride s past the
      export size, however its values are applied: a strided pattern is an eye at T <= s, so `adj + eye(int(N))`
      (self-loops) is not told from `adj + ((i - j) % 8 == 0)` either;
    - a uniform constant along any axis but a batch's is also the same value up to an edge past the export size:
      every mask that lets everything through there (True, 0 added, 0 or 1 multiplied; a local window
      `|i - j| <= w` or chunks of w >= T, a cutoff `j < L` with L >= T) and every indicator added or concatenated
      (`x + (arange(T) < 20)`: 1 inside the first 20 frames, 0 past them); rebuilt as uniform, each is wrong at
      every size past its edge. Along batch dims alone (named so, and no length: `batch_frames` is one) no model
      masks by position (`zeros(int(B), H)`: safe);
    - a uniform constant of any value but 0 and 1 (and a float 1 along an axis exported at 2), along batch dims
      too, is also a value computed from the sizes at the export size: `full((T,), 1 / T)`, `full((T, 1),
      log(T))`, `full((B, 1), float(T))`, `1 / (B - 1)` (`zeros(int(B), H)` or an all-True mask stays safe);
    - a table's first T rows `pe[:T]` are, at the export size N, also its rows `pe[N - T : N]` (rows anchored at
      their end: the last T of a context of N, right-aligned positions);
    - a sinusoidal table of the integer positions 0, 1, ..., T-1 and a library's base (10000, 500000, 1000, 100) is
      also the table of positions capped at any c >= T-1 (`arange(T).clamp(max=c)`, clipped relative positions),
      of positions that restart every c >= T frames (`arange(T) % c`, streaming chunks) and of frequencies that
      change past a length L >= T (dynamic NTK rotary scaling); one whose positions step by s != 1 (its largest
      frequency s) is positions scaled by a factor, which may follow the length (`arange(T) * c / T` is s only at
      the export length); one of a base no library uses may have it computed from the length (NTK scaling by the
      length, without a branch);
    - positions 0, 1, ..., N-1 folded for more rows than the export length and cut to the length (speechbrain's
      rotary cache) are, past N, the same positions continuing or positions capped at N, or a table whose
      frequencies change past N (a module computing its cache for max(T, N), as dynamic NTK scaling does);
    - 0, 1, ..., T-1 is also `arange(T).clamp(max=c)` for any c >= T-1 (positions capped at a table's length);
      so is a mask's width pinned further on, which is T wherever the model runs (PyTorch's `.item()` must
      equal it too) but whose positions past the export length the graph does not show;
    - a whole sinusoidal table of N rows is the same up to N whether the module computes more rows, stops at N, or
      changes its frequencies past N (dynamic NTK or YaRN rotary scaling).
    - a constant whose rows are sizes of the graph's tensors at the export size may be the model's own numbers
      that equal them there; rebuilt from Shape ops of those tensors only where one reading of its rows stands
      (not at a square export, `H = W`, nor where the export size was searched); the proof compares it with the
      original, which is wrong at every other size, so `--force` writes it.
    Values that follow no family (a learned gain `[[0.3, -1.2]]`, a learned table) are weights: never regrown.
    Not fixable, reported with the constant's name and the PyTorch change (`self.pe[:, : x.size(1)]` without
    int()): a constant whose other values are gone from the graph (a learned table cut at the export length),
    folded relative position ranges (`arange(L, -L, -1)`), and positions read other than through a prefix cut
    (summed, gathered, cut from another row: their count matters, and the finding says where).
    """

    code = "GF006"
    name = "trace-baked-constant"
    severity = Severity.ERROR
    fixable = True
    traced_values = True

    @classmethod
    def baked_operands(cls, ctx: RuleContext):
        """The structured constants cut at an export-time size that a re-trace computes again."""
        return baked_operands(ctx)
    knowledge = (
        known(r"TracerWarning: Converting a tensor to a Python (integer|boolean|float|index)",
              "Export warning: a value will be baked into the graph as a constant",
              "The traced code turned a tensor into a Python number (int(), float(), bool(), .item(), an `if` on a "
              "tensor); the exporter records the export-time value as a constant.",
              "Keep the value a tensor at the source line the warning names; `graphfix.export()` links each warning "
              "to the graph finding it causes."),
    )

    def detect(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        yield from (*self._length_caps(ctx), *self._formula_tables_cut(ctx))
        direct = list(baked_operands(ctx))
        for baked in direct + [b for b in expanded_constants(ctx) if is_uniform(b.value, [a for a, _ in b.axes])]:
            yield from self._baked_constant(ctx, baked)
        yield from self._pinned_widths(ctx, [b.const for b in direct])
        yield from self._size_sets(ctx)

    # --- a constant whose rows are the graph's own sizes at the export size (DeformableDetr's offset_normalizer) ---
    def _size_sets(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        for found in size_sets(ctx):
            if isinstance(found, str):
                yield self.reject(found)
                continue
            yield self._size_set(ctx, found)

    def _size_set(self, ctx: RuleContext, s: SizeSet) -> Finding:
        where = {"nodes": [s.node], "tensors": [s.const], "shapes": {s.const.name: list(s.value.shape)}}
        hint = ("Sizes went through Python while tracing (`torch.as_tensor([(h, w) for ...])`, `int(x.shape[-1])`): "
                "build them from traced shapes (`torch.stack([x.shape[-1], x.shape[-2]])`), or use dynamo=True.")
        message = s.describe() + "; the constant keeps these values at every other size, which runs and is wrong"
        if s.others:  # a square export, or an export size searched: which dim is which is not told
            first = " / ".join(f"({', '.join(map(str, e))})" for e in s.others[0])
            more = f" and {len(s.others) - 1} other match(es)" if len(s.others) > 1 else ""
            return self.finding(message + f" (its rows are also {first}{more}: not repaired)", **where, hint=hint)
        return self.finding(message, **where, hint=hint, fix=Fix(
            f"compute '{s.const.name}' from Shape ops of " + ", ".join(f"'{t.name}'" for t, _ in s.carriers),
            apply=rebuilt(s, ctx.opset), safety=Safety.UNSAFE,
            reason="each row equals the sizes of one tensor at the export size (applied), and a model's own "
                   "numbers may equal them there: the graph does not say which"))

    # --- a length capped by a whole sinusoidal table folded at export (a rotary cache of fixed rows) -----------------
    def _formula_tables_cut(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        """`self.cos[:T]` of a cached rotary table, or speechbrain's cache computed for 64 positions and folded whole:
        the graph runs only while T <= its rows. Its values are a formula, so a repair can compute more rows; but
        whether the module does (a cache grown per call) or stops there (a fixed maximum; rotary scaling that
        changes the frequencies past it) the graph does not say, and a table of a model's own maximum length
        (`self.pe[:, : x.size(1)]`, 5000 rows) is healthy: a note, its fix unsafe."""
        for node in ctx.graph.nodes:
            cut = rows_cut_at_a_length(ctx, node)
            if cut is None:
                continue
            value, along, (tensor, axis) = cut
            rows = value.shape[along]
            table = sinusoid_table(value, [along])
            if isinstance(table, str):
                yield self.reject(f"'{node.name}' cuts a {rows}-row constant at a length, but it is {table}",
                                  nodes=[node])
                continue
            name, length = node.inputs[0].name, f"{tensor.name}.shape[{axis}]"
            exported = length_at_export(ctx, tensor, axis, rows)
            yield self.finding(
                f"{node.op} '{node.name}' cuts constant '{name}' ({rows} rows) to {length}: longer inputs fail in "
                f"onnxruntime. The constant is {table.show()}, {table.past(rows)}" + (
                    f". Its {rows} rows are the length at export ({exported}): a cache filled at the export length "
                    "(a run before the export, or the trace itself), unless the model's own maximum is exactly "
                    "that length" if exported else ""),
                nodes=[node], tensors=[node.inputs[0]], severity=Severity.ERROR if exported else Severity.INFO,
                hint="Compute the table from the traced length in forward() (torch.arange(x.shape[1])), or export "
                     "a fresh module (not run before, where it caches) with a table as long as any input you deploy.",
                fix=Fix(f"compute '{name}' as the same sines and cosines of Range(0, max({rows}, {length}))",
                        apply=sinusoid_input(node, 0, value, table, tensor, axis, ctx.opset, at_least=rows),
                        safety=Safety.UNSAFE,
                        reason=table.doubt_past(rows)))

    # --- a length capped by positions folded at export (FunnelModel's relative positions) ------------------------
    def _length_caps(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        ranges = folded_ranges(ctx)
        if not ranges:
            return  # the analysis is only paid for on graphs that hold a folded arange
        for cap in caps(sizes_of(ctx)):
            node, sym, limit = cap.constraint.node, cap.symbol, cap.limit
            source = next((r for r in ranges if r.length in (limit, limit + 1)), None)
            if source is None:
                yield self.reject(f"{sym} <= {limit} at '{node.name}', but no folded arange of that length",
                                  nodes=[node])
                continue
            value = source.export_length
            baked = f"export-time length {sym}={value}" if value else f"{source.length} positions"
            grown = positions_cut_to_length(ctx, source, cap)
            fix = None if isinstance(grown, str) else Fix(
                f"compute '{source.tensor.name}' as Range(0, max({source.length}, {sym}))"
                + (f" and let {len(grown[1])} Reshape(s) on its way follow it" if grown[1] else ""),
                apply=positions_at_least(source.tensor, source.length, ctx.constant_value(source.tensor).dtype,
                                         *grown, ctx.opset),
                safety=Safety.UNSAFE,
                reason=source.doubt(sym))
            yield self.finding(
                f"{node.op} '{node.name}' runs only while {sym} <= {limit} (it needs {cap.constraint.left} = "
                f"{cap.constraint.right}): constant '{source.tensor.name}' is {source.show()}, positions computed "
                f"for the {baked} and folded into the graph; longer inputs fail in onnxruntime and other lengths "
                "get positions of the wrong length" + (f" (not regrown: {grown})" if isinstance(grown, str) else ""),
                nodes=[node], tensors=[source.tensor], fix=fix,
                hint="Positions were built with Python ints (`len(pos)`, `int(seq_len)`, `x.size(1)` through "
                     "`range`): build them with torch.arange on traced sizes, or export with dynamo=True.")

    # --- a constant's width that a constraint further on pins (speechbrain's `length_to_mask` width) -------------
    def _pinned_widths(self, ctx: RuleContext, direct: list[gs.Tensor]) -> Iterator[Finding | Rejection]:
        """`arange(lengths.max().item())` compared with the lengths `[B, 1]` and reshaped to `[B, 1, 1, T]` by
        attention: the width meets no dynamic dim where the constant is read, but the Reshape needs it to be T.
        (`direct`: the constants that meet one, reported already.)"""
        if not widening_constants(ctx):
            return  # the size analysis is only paid for on graphs where a constant widens another operand
        for pinned in pinned_operands(ctx, direct):
            if isinstance(pinned, str):
                yield self.reject(pinned)
            else:
                yield from self._pinned_width(ctx, pinned)

    def _pinned_width(self, ctx: RuleContext, p: Pinned) -> Iterator[Finding | Rejection]:
        width, reader, (carrier, axis) = p.solution.value, p.node, p.carrier
        message = p.describe()
        where = {"nodes": [p.solution.constraint.node, reader], "tensors": [p.const],
                 "shapes": {p.const.name: list(p.value.shape)}}
        hint = ("Give the width as a traced size (`length_to_mask(lengths, max_len=x.shape[1])`, "
                "`torch.arange(x.shape[1])`), not a Python int.")
        arange = arange_axis(p.value, [p.axis])
        if arange is None or arange[:2] != (0.0, 1.0):
            yield self.reject(f"'{p.const.name}' is not 0, 1, 2, ... along axis {p.axis}: not rebuilt",
                              nodes=[reader])
            yield self.finding(message + "; its values are not an arange: not repaired", **where, hint=hint)
            return
        if why := kept_because(ctx, p):  # the Python int also reaches what nothing pins: rebuilt, that would change
            yield self.finding(message + f"; it is arange({width}) along axis {p.axis}, {why}; not repaired",
                               **where, hint=hint)
            return
        length = f"Shape({carrier.name})[{axis}]"
        yield self.finding(
            message + f"; it is arange({width}) along axis {p.axis}", **where, hint=hint,
            fix=Fix(f"compute {p.const.name} as Range(0, {length})",
                    apply=loosened(reader, {width}, in_turn(arange_input(node, index, p.value, p.axis, carrier,
                                                                       axis, ctx.opset) for node, index in p.readers)),
                    safety=Safety.UNSAFE, reason=p.doubt()))

    # --- constant operands cut at an export-time size -----------------------------------------------------------
    def _baked_constant(self, ctx, c: Baked) -> Iterator[Finding | Rejection]:
        base, where = c.describe(), c.where()
        baked = [a for a, _ in c.axes]
        # Uniform along the baked axes (ones/zeros/full): a size-1 dim broadcasts to any size.
        if is_uniform(c.value, baked):
            small = shrunk(c.value, baked)
            doubt = bands.uniform_alternatives(c)  # all let through at T: so does a mask whose edge lies past T
            yield self.finding(
                base + "; its values do not vary along those axes", **where,
                hint="`torch.zeros(int(x.shape[1]))`-style constants: use `x.new_zeros(...)`/broadcast a scalar."
                     + (" A mask or a value built with a Python int (a window, a chunk, a cutoff, `1 / T`) must be "
                        "built from the traced size (`torch.arange(x.size(1))`)." if doubt else ""),
                fix=Fix(f"shrink {c.const.name} to {list(small.shape)} (broadcasting restores the size)",
                        apply=loosened(c.node, c.export_sizes(), set_constant(c.node, c.index, small)),
                        safety=Safety.UNSAFE if doubt else Safety.SAFE,
                        reason=f"uniform along the baked axes: a uniform constant (applied, the simplest) or {doubt}; "
                               "the graph does not say which" if doubt else
                               "the constant is uniform along the baked axes, so a size-1 dim broadcasts to it"))
            return
        # 0, 1, 2, ... along one baked axis (arange): Range over the dim.
        arange = arange_axis(c.value, baked)
        if arange is not None and arange[0] == 0 and arange[1] == 1 and \
                np.array_equal(c.value.reshape(-1), np.arange(c.value.size)):  # recomputed, not taken on trust
            axis = arange[2]
            yield self.finding(
                base + f"; it is arange({c.value.shape[axis]}) along axis {axis}", **where,
                hint="`torch.arange(int(x.shape[1]))` was folded; write `torch.arange(x.shape[1])`.",
                fix=Fix(f"compute {c.const.name} as Range(0, Shape({c.other.name})[{c.source(axis)}])",
                        apply=loosened(c.node, c.export_sizes(), arange_input(
                            c.node, c.index, c.value, axis, c.other, c.source(axis), ctx.opset)),
                        safety=Safety.UNSAFE,
                        reason=f"0, 1, ..., {c.value.shape[axis] - 1} along the dynamic axis is arange(T) (applied, "
                               f"the simplest) or arange(T).clamp(max=c) for any c >= {c.value.shape[axis] - 1} "
                               "(positions capped at a table's length): the graph does not say which"))
            return
        why = ["not uniform or an arange along the baked axes"]  # each structure tried, why it did not match
        # The leading rows of a table still in the graph (`self.pe[:, :int(T)]`, self.pe read elsewhere): Slice.
        table = table_prefix(c.value, baked, tables(ctx, c), ctx.constant_value)
        if not isinstance(table, str):
            cut = ", ".join(f"axis {a} to {c.other.name}.shape[{c.source(a)}]" for a in baked)
            ends = ", ".join(str(c.value.shape[a]) for a in baked)  # the export sizes: [N - T : N] is [0 : T] there
            yield self.finding(
                base + f"; it is the start of '{table.name}' {list(table.shape or [])}, still in the graph", **where,
                hint="A table was cut with a Python int (`self.pe[:, :int(x.size(1))]`); drop the int().",
                fix=Fix(f"compute {c.const.name} as Slice({table.name}, {cut})",
                        apply=loosened(c.node, c.export_sizes(), table_slice_input(
                            c.node, c.index, table, {a: (c.other, c.source(a)) for a in baked}, ctx.opset)),
                        safety=Safety.UNSAFE,
                        reason=f"the constant equals the leading entries of {table.name}, `{table.name}[:T]` "
                               f"(applied, the simplest), and so do the entries that end at the export size "
                               f"N, `{table.name}[N - T : N]` with N = {ends} (rows anchored at their end, "
                               "right-aligned positions), which differ at every other size: the graph does not say "
                               "which"))
            return
        why.append(f"no table's prefix ({table})")
        # A sinusoidal position table cut at the export length (`self.pe[:, :int(T)]`, the rest gone): a formula.
        sinusoid = sinusoid_table(c.value, baked)
        if not isinstance(sinusoid, str):
            axis = sinusoid.axis
            yield self.finding(
                base + f"; it is {sinusoid.show()} of {c.value.shape[axis]} positions", **where,
                hint="A position table was cut with a Python int (`self.pe[:, :int(x.size(1))]`); write "
                     "`self.pe[:, : x.size(1)]` (without int()), or compute it from the traced length.",
                fix=Fix(f"compute {c.const.name} as the same sines and cosines of Range(0, "
                        f"Shape({c.other.name})[{c.source(axis)}])",
                        apply=loosened(c.node, c.export_sizes(), sinusoid_input(
                            c.node, c.index, c.value, sinusoid, c.other, c.source(axis), ctx.opset)),
                        safety=Safety.UNSAFE,
                        reason=sinusoid.doubt(c.value.shape[axis])))
            return
        why.append(f"no sinusoidal table ({sinusoid})")
        # A triangle (tril/triu mask) or a diagonal (eye) over the last two axes: Trilu/EyeLike over the dims.
        band = band_pattern(c.value, baked)
        if not isinstance(band, str) and (band.kind == "eye" or ctx.opset >= 14):
            masks = bands.hypotheses(c.value, baked, band)  # recomputed: the proposal must reproduce the constant
            if isinstance(masks, str):
                yield self.reject(f"no rebuild for '{c.const.name}': {masks}", nodes=[c.node])
                yield self.finding(base + f"; {masks}: not repaired", **where,
                                   hint="Build the mask from the traced size (`x.size(1)`, not int()) and re-export.")
                return
            rebuild = bands.band_rebuild(c, band, masks)
            yield self.finding(
                base + f"; it is {band.show()}" + (f", or {rebuild.others}" if len(masks) > 1 else ""), **where,
                hint=f"The mask was built with a Python int (e.g. `{band.torch('int(T)', rebuild.cols)}`); build it "
                     f"from the traced size: `{band.torch('x.size(1)', rebuild.cols)}`" + (
                         " (or the window it really is), then re-export" if len(masks) > 1 else "") + ".",
                fix=Fix(f"compute {c.const.name} as {rebuild.op}(ConstantOfShape({c.other.name}'s dims)) with the "
                        "mask's values", apply=loosened(c.node, c.export_sizes(), band_input(
                            c.node, c.index, c.value, band, rebuild.entries, ctx.opset)),
                        safety=Safety.SAFE if rebuild.safe else Safety.UNSAFE, reason=rebuild.reason))
            return
        why.append("no mask (" + (band if isinstance(band, str) else f"Trilu needs opset 14, not {ctx.opset}") + ")")
        yield self.reject(f"no rebuild for '{c.const.name}': " + "; ".join(why), nodes=[c.node])
        said, hint = c.lost()
        yield self.finding(base + said, **where, hint=hint)

