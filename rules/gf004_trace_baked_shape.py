"""GF004 trace-baked-shape."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis import export_sizes as evidence
from graphfix.analysis.context import RuleContext
from graphfix.analysis.edits import loosened, rebuilt_entries, replace_input, size_expr
from graphfix.analysis.hypotheses import show
from graphfix.analysis.sizes import (
    baked_expands,
    baked_reshapes,
    baked_slices,
    caps,
    determined_entries,
    frozen_by_other_entries,
    partly_constant,
    sizes_of,
)
from graphfix.analysis.sizes.arith import same
from graphfix.core.rule import Choice, Finding, Fix, Rejection, Rule, Safety, Severity, known

INT64_MAX = np.iinfo(np.int64).max
VALUE_ONLY = {"ConstantOfShape": 0, "Tile": 1, "Range": 1, "Resize": 3}  # shape-carrying input index
# a constant equal to a given (--trace-shape) size that no constraint pins: a coincidence is as likely as a bake
_BY_VALUE = ("the export size of {dims} is given, not solved: no constraint of the graph pins it, so the constant "
             "may be a model size that equals it at export (rewriting a healthy reshape or slice changes its output)")
HINT_CHOICE = " `graphfix repair` builds each and applies one only if the proof accepts it alone."
HINT_INT = ("A size went through Python while tracing (`int(x.shape[i])`, `.item()`, `.tolist()`, a literal batch): "
            "pass the traced size itself (`x.shape[i]`, `x.size(i)`) or use -1 / `expand(-1, ...)`.")


class TraceBakedShape(Rule):
    """Export-time sizes of dynamic dims captured as constants in Reshape/Expand/Slice/... shape inputs.

    ## What it does
    Finds constants in shape-carrying inputs (Reshape shape, Expand shape, Slice ends, Range limit,
    ConstantOfShape, Tile repeats, Split sizes, Pad pads, Resize sizes) whose values are the export-time sizes of
    dims the graph declares dynamic. The sizes come from `--trace-shape NAME=2x400`, else from the graph's own
    constraints, solved by the size analysis: a Reshape whose element count holds at one size only, an Expand or
    an elementwise op meeting a dynamic dim with a constant one, Split sizes. (Constant *tensors* cut at an
    export size are GF006's.)

    ## Why it breaks deployment
    While tracing, `x.size(i)` is a tensor, but `int(...)`, `.item()`, `.tolist()`, `math.ceil`, a Python `if`
    and a literal batch turn it into a number that the exporter writes into the graph (PyTorch's own
    `nn.MultiheadAttention` bakes the query length this way under the TorchScript exporter). The model then runs
    at the export size only: onnxruntime fails elsewhere with `The input tensor cannot be reshaped to the
    requested shape` (torchvision Faster R-CNN, vision #4623), or silently returns wrong shapes.

    ## Example
    ```python
    n = int(x.shape[0])                 # baked: Reshape(shape=[14, 3, 4])
    return self.fc(x).reshape(n, 3, 4)  # write reshape(-1, 3, 4) or reshape(x.shape[0], 3, 4)
    return x.reshape(2, -1, 4)          # x[B, 8] traced at B=2: runs at every B, the 2 may be meant (warning)
    ```
    Repaired: the baked entry becomes `0` (copy the input dim) in Reshape, `1` in Expand, "to the end" in
    Slice, or the solved expression (`Shape(x)[i]`, `Shape(x)[0] * 4`) computed at run time.

    ## Fix safety
    Safe when a constraint of the graph pins the size (a solved element count, an Expand or a broadcast against
    the dim, Split sizes) and the constant stands for that dim. For a solved element count, each constant entry's
    hypotheses (graphfix.analysis.hypotheses: `T`, `T // k`, `2*T`, ...) must keep the count beyond the export
    size, and an output dim declared dynamic that a choice would keep fixed rules it out: `reshape(B, int(T) // 3,
    12)` traced at T=6 with the output declared `[B, G]` is `T // 3`, not `2*T`. An entry the analysis proposes
    that these hypotheses do not leave is not repaired. A Slice end equal to a solved size is safe only where a
    consumer needs the slice to follow the size (otherwise it may be the model's own length).
    A constant that only equals a size given with `--trace-shape` (or guessed from the constant) may be the
    model's own: `Reshape(x[B, 8], [2, -1, 4])` runs at every B, and rewriting it changes a healthy model; such
    fixes, and Slice ends equal to a given length, are unsafe and the finding a warning, as is a new axis an
    Expand makes that only equals a given size (`repeat_interleave(x, 2, 1)` traced at batch 2, once GF002 made
    its Tile an Expand). Unsafe also when the link is by value only, or two dynamic dims had the same export size.
    Where several entries could stand for the size (MultiheadAttention traced at a length equal to its head size),
    `repair` builds each and applies one only if the proof accepts it alone. Not fixable: Split sizes (the number
    of outputs is fixed) and pad amounts computed in Python.
    """

    code = "GF004"
    name = "trace-baked-shape"
    severity = Severity.ERROR
    fixable = True
    runtime_ops = frozenset({"Reshape", "Expand", "Split", "Slice", "Tile", "ConstantOfShape", "Range", "MatMul",
                             "Gemm"})
    runtime_messages = (r"MatMul dimension mismatch", r"Non concat axis dimensions must match")
    runtime_order = 30
    runtime_hint = ("A size was baked into a shape constant at export time; compute it from the input (x.shape / "
                    "Shape ops) or use -1, and re-export with dynamic axes. Where the graph does not tell which "
                    "constants follow the input (patch counts or patch sizes), `graphfix.export(module, args, path, "
                    "...)` traces the module at other sizes and rebuilds the ones that move.")
    traced_values = True

    @classmethod
    def baked_entries(cls, sizes, choices: dict[str, int]):
        """Each baked Reshape entry with one candidate expression, or the one the repair chose; none while ambiguous."""
        for baked in baked_reshapes(sizes):
            chosen = [e for e in baked.entries if e.index == choices[baked.node.name]] if baked.node.name in choices \
                else baked.entries if len(baked.entries) == 1 else []
            yield from ((baked.node, 1, e.index, e.value, e.expr) for e in chosen)
    knowledge = (
        known(r"cannot be reshaped to the requested shape",
              "onnxruntime Reshape: the requested shape holds a size baked at export time",
              "A size went through Python while tracing (`int(x.shape[1])`, `.item()`, `.tolist()`, a literal batch), "
              "so the Reshape's target shape is a constant that only fits the export-time input.",
              "Use `x.shape[i]` directly (it stays a tensor while tracing), `-1`, or `x.flatten()`/`unflatten()`; "
              "`graphfix repair` rebuilds the shape from Shape(x) where the graph allows.",
              reports="torchvision #4623/#8534/#8899 (Faster R-CNN), mmdetection #4238"),
        known(r"Cannot split using values in 'split' attribute",
              "onnxruntime Split: the split sizes were baked from a Python list of per-item sizes",
              "Per-image Python lists (`[len(b) for b in boxes]`) become a constant `split` of the export batch.",
              "Avoid Python lists of sizes in forward(); split with tensor ops or export with the batch you deploy.",
              reports="torchvision #8937"),
        known(r"MatMul dimension mismatch|left operand cannot broadcast on dim \d+",
              "onnxruntime MatMul: operand shapes disagree",
              "A reshape before the MatMul used a baked size, so the inner dims no longer agree at other sizes.",
              "Keep sizes as tensors in the reshapes feeding the MatMul; run `graphfix diagnose` to find the Reshape."),
        known(r"reshape wildcard -1 has infinite number of solutions",
              "TensorRT: Reshape with -1 on a tensor that can have 0 elements",
              "A dim that can be 0 (no detections) meets a -1 in the target shape; often with a baked `if` on a size.",
              "Avoid -1 next to a possibly-empty dim; compute the shape from Shape(x).",
              reports="torchvision #8734"),
        known(r"'Tensor' object has no attribute 'is_integer'",
              "Export: a size is a Tensor while tracing",
              "Under tracing `x.size(i)` is a 0-d Tensor, so `tsz / multiple` is a Tensor and has no is_integer() "
              "(fairseq `pad_to_multiple`). Patching it with float() bakes the branch and the pad amount.",
              "Compute the remainder with tensor ops: `remainder = (-tsz) % multiple`, pad with it unconditionally "
              "(F.pad with 0 is a no-op), and never branch on it in Python.",
              reports="fairseq #5595"),
        known(r"Constraints violated|specialized it to be a constant|but your code specialized",
              "Export (dynamo): a dim marked dynamic was specialized to a constant",
              "Code in forward() fixes the dim (a Python int of a size, an assert on it, a shape-dependent branch), "
              "so torch.export cannot keep it dynamic.",
              "Remove the code that forces a specific size, or declare the dim with the range the code allows "
              "(`torch.export.Dim('T', min=2, max=4096)`)."),
    )

    def detect(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        ev = ctx.evaluator
        sizes = evidence.export_sizes(ctx, ev)
        yield from self._solved_reshapes(ctx, ev)
        yield from self._solved_expands(ctx, ev)
        by_op = {"Reshape": self._reshape, "Expand": self._expand, "Slice": self._slice, "Split": self._split,
                 "Pad": self._pad, **dict.fromkeys(VALUE_ONLY, self._value_only)}
        for node in ctx.graph.nodes:
            if node.op in by_op:
                yield from by_op[node.op](ctx, ev, sizes, node)

    # --- partly constant Reshape shapes: the element count pins a size (solved constraint) ------------------------
    def _solved_reshapes(self, ctx: RuleContext, ev) -> Iterator[Finding | Rejection]:
        """MultiheadAttention's `Concat([7], B*heads, [4])`: the size analysis solves the element count for the
        size it pins (T = 7) and rebuilds the constant entry that stands for it. Only paid for on candidates."""
        wanted = {id(n) for n in ctx.graph.nodes if n.op == "Reshape" and partly_constant(ev.elems(n.inputs[1]))}
        if not wanted:
            return
        sizes = sizes_of(ctx)
        for baked in baked_reshapes(sizes):
            if id(baked.node) in wanted:  # constant shape vectors: `_reshape` owns them
                yield self._solved_finding(ctx, sizes, baked)
        if sizes.incomplete:
            yield self.reject(sizes.incomplete + "; later Reshapes were not checked (analysis incomplete)")

    def _solved_finding(self, ctx: RuleContext, sizes, baked) -> Finding:
        node, (sym, value) = baked.node, (baked.solution.symbol, baked.solution.value)
        data, target = node.inputs[0], ", ".join(str(t) for t in sizes.value(node.inputs[1]))
        message = (f"Reshape '{node.name}' bakes {sym}={value}, an export-time size: its element count "
                   f"{baked.solution.constraint.left} equals that of its shape [{target}] only at {sym}={value}, so "
                   f"onnxruntime fails ('cannot be reshaped to the requested shape') at every other {sym}")
        kwargs = dict(nodes=[node], tensors=[data, node.inputs[1]], shapes={data.name: sizes.dims(data)})
        # the proposal checked against the hypotheses the graph's constraints leave, recomputed
        left = determined_entries(sizes, baked)
        wrong = [e for e in baked.entries if not any(d.index == e.index and same(d.expr, e.expr) for d in left)]
        if wrong:
            return self.finding(
                f"{message}; the analysis proposes {_entry_text(wrong[0])}, which the graph's constraints do not "
                f"leave (they leave {', '.join(_entry_text(d) for d in left) or 'nothing'}): not repaired", **kwargs,
                hint=HINT_INT)
        entries = [e for e in baked.entries if size_expr(None, sizes, e.expr, data)]
        entries += [d for d in left if not any(d.index == e.index for e in baked.entries)
                    and size_expr(None, sizes, d.expr, data)]
        chosen = [e for e in entries if e.index == ctx.options.choices.get(node.name)]
        trial = len(entries) > 1 and bool(chosen)  # one of repair's trials (see Choice): the proof judges it
        entries = chosen if trial else entries
        if len(entries) != 1:  # none rebuildable, or several that fit: the proof chooses, if one alone passes
            labels = tuple(_entry_text(e) for e in entries)
            choice = Choice(node.name, tuple(e.index for e in entries), labels) if entries else None
            return self.finding(f"{message}; entries that could stand for it: {', '.join(labels) or 'none'}",
                                **kwargs, hint=HINT_INT + HINT_CHOICE * bool(entries), choice=choice)
        entry = entries[0]
        rebuild = rebuilt_entries(node, 1, {entry.index: entry.expr}, sizes, ctx.opset)
        # a declared dim disagrees
        doubt = "; ".join(f.why for f in frozen_by_other_entries(sizes, node, entry.index)[:2])
        if entry.others:  # several expressions fit the same entry: the graph does not say which
            doubt = "; ".join(filter(None, [doubt, f"{show(entry.expr)} (applied, the simplest) or "
                                            + " or ".join(show(o) for o in entry.others) + " fits the element count "
                                            "as well: they differ at other sizes and the graph does not say which"]))
        return self.finding(
            f"{message}; entry {entry.index} ({entry.value}) is {entry.expr}" + (f"; but {doubt}" if doubt else ""),
            **kwargs, hint=HINT_INT,
            fix=Fix(f"compute entry {entry.index} of Reshape '{node.name}' shape as {entry.expr} from Shape ops",
                    apply=loosened(node, {value}, rebuild), safety=Safety.UNSAFE if doubt else Safety.SAFE,
                    reason=f"the element count says entry {entry.index} is {entry.expr}, but {doubt}" if doubt else
                    "the one candidate the proof accepted (repair's trial)" if trial else
                    f"solved from the element count: entry {entry.index} is {entry.expr} at every size"))


    # --- partly constant Expand shapes: a broadcast right after pins a size (solved constraint) ----------------
    def _solved_expands(self, ctx: RuleContext, ev) -> Iterator[Finding]:
        """speechbrain's length mask, `arange(T).expand(len(lengths), T) < lengths.unsqueeze(1)`: `len()` bakes the
        batch into `[2, T]`, and the Less meets it with the batch, which holds at B = 2 only. The entry is rebuilt
        from the size it meets. (Constant Expand shapes are `_expand`'s.)"""
        wanted = {id(n) for n in ctx.graph.nodes if n.op == "Expand" and partly_constant(ev.elems(n.inputs[1]))}
        if not wanted:
            return
        sizes = sizes_of(ctx)
        for baked in baked_expands(sizes):
            node, entry, sym = baked.node, baked.entries[0], baked.solution.symbol
            if id(node) not in wanted or not size_expr(None, sizes, entry.expr, node.inputs[0]):
                continue  # no run-time source for the size: GF003 reports the broadcast
            consumer = baked.solution.constraint.node
            yield self.finding(
                f"Expand '{node.name}' bakes {sym}={baked.solution.value}, an export-time size: entry {entry.index} "
                f"({entry.value}) of its shape meets {entry.expr} in {consumer.op} '{consumer.name}', which "
                f"broadcasts only at {sym}={baked.solution.value}; entry {entry.index} is {entry.expr}",
                nodes=[node, consumer], tensors=[node.inputs[0], node.inputs[1]],
                shapes={node.inputs[0].name: sizes.dims(node.inputs[0])},
                hint=HINT_INT + " E.g. `len(lengths)` -> `lengths.shape[0]`.",
                fix=Fix(f"compute entry {entry.index} of Expand '{node.name}' shape as {entry.expr} from Shape ops",
                        apply=loosened(node, {entry.value}, rebuilt_entries(node, 1, {entry.index: entry.expr},
                                                                             sizes, ctx.opset)),
                        safety=Safety.SAFE,
                        reason=f"the broadcast in {consumer.op} '{consumer.name}' says entry {entry.index} is "
                               f"{entry.expr} at every size, and the Expand's input has no dim of its own there"))

    # --- Reshape -------------------------------------------------------------------------------------------
    def _reshape(self, ctx, ev, sizes, node) -> Iterator[Finding | Rejection]:
        data, target_t = node.inputs[0], node.inputs[1]
        shape, target = ctx.shape(data), ev(target_t)
        # only constant targets can be baked
        if target is None or shape is None:
            return
        target = [int(t) for t in target.reshape(-1)]
        syms = {i: d for i, d in enumerate(shape) if isinstance(d, str) and d in sizes.carriers}
        # only the graph inputs' dynamic dims have export-time sizes to compare with
        if not syms:
            return
        allowzero = int(node.attrs.get("allowzero", 0))
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
            elif evidence.regroups_static_trailing_dims(shape, target, j):
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
            rest = evidence.match_fixed_count(sizes, data, target, entries, syms, rest, notes, unsafe)
            if rest:
                dims = ", ".join(s for _, s in rest)
                yield self.finding(
                    f"Reshape '{node.name}' has the constant shape {target}: its element count is fixed while "
                    f"the input {data.name} {shape} varies with {dims}; it runs at the export size only",
                    nodes=[node], tensors=[data, target_t], shapes={data.name: shape},
                    hint=HINT_INT + " Give --trace-shape NAME=DIMS so graphfix can tell which entry is baked.")
                return
        if not notes:
            return
        if guessed:
            unsafe.append(f"export size of {', '.join(guessed)} guessed from the constant; confirm with --trace-shape")
        if given:
            unsafe.append(_BY_VALUE.format(dims=", ".join(given)))
        safety = Safety.UNSAFE if unsafe else Safety.SAFE
        reason = "; ".join(unsafe) or "each replaced entry is the export size of the input's dynamic dim there"
        # an error needs a solved constraint: an entry that only equals an export size may be meant
        doubt = guessed or given
        yield self.finding(
            f"Reshape '{node.name}' {'may bake' if doubt else 'bakes'} export-time sizes into its shape {target}: "
            + "; ".join(notes) + f"; {'if so, ' if doubt else ''}at other sizes of {data.name} {shape} onnxruntime "
            "fails ('cannot be reshaped to the requested shape') or returns a wrong shape",
            nodes=[node], tensors=[data, target_t], shapes={data.name: shape}, hint=HINT_INT,
            severity=Severity.WARNING if doubt else None,
            fix=_shape_fix(ctx, node, target, entries, safety, reason))

    # --- Expand --------------------------------------------------------------------------------------------
    def _expand(self, ctx, ev, sizes, node) -> Iterator[Finding | Rejection]:
        data, target_t = node.inputs[0], node.inputs[1]
        shape, target = ctx.shape(data), ev(target_t)
        if target is None or shape is None:
            return
        target = [int(t) for t in target.reshape(-1)]
        offset = len(target) - len(shape)
        entries: list[int | tuple[gs.Tensor, int]] = list(target)
        notes, by_value, given_only = [], [], []
        for j, t in enumerate(target):
            i = j - offset
            dim = shape[i] if i >= 0 else 1
            if t <= 1:
                continue
            if isinstance(dim, str) and sizes.values.get(dim) == t:
                entries[j] = 1  # Expand keeps the input's dim where the shape says 1
                notes.append(f"entry {j} = {t} is {sizes.explain(dim)}")
            elif dim == 1 and len(cands := evidence.carriers_of(sizes, t)) == 1:
                entries[j] = sizes.carriers[cands[0]]
                by_value.append(f"entry {j} = {t} equals {sizes.explain(cands[0])}")
                given_only.append(not sizes.is_solved(cands[0]))
        if not notes and not by_value:
            return
        safety = Safety.UNSAFE if by_value else Safety.SAFE
        reason = ("the expanded dim is linked to the graph input by value only" if by_value else
                  "the input carries the dynamic dim at each replaced position; 1 keeps it")
        yield self.finding(
            f"Expand '{node.name}' bakes export-time sizes into its shape {target}: " + "; ".join(notes + by_value)
            + "; at other sizes onnxruntime fails or the output keeps the export size",
            nodes=[node], tensors=[data, target_t], shapes={data.name: shape},
            hint=HINT_INT + " E.g. `cls.expand(int(x.shape[0]), -1, -1)` -> `cls.expand(x.shape[0], -1, -1)`.",
            # a new axis that only equals a size given with --trace-shape may be the model's own (a repeat count)
            severity=Severity.WARNING if by_value and all(given_only) and not notes else None,
            fix=_shape_fix(ctx, node, target, entries, safety, reason))

    # --- Slice ---------------------------------------------------------------------------------------------
    def _slice(self, ctx, ev, sizes, node) -> Iterator[Finding | Rejection]:
        data = node.inputs[0]
        shape = ctx.shape(data)
        values = [ev(t) for t in node.inputs[1:5] if t.name or isinstance(t, gs.Constant)]
        if shape is None or len(values) < 2 or any(v is None for v in values):
            return
        starts, ends = values[0].reshape(-1), values[1].reshape(-1).copy()
        axes = values[2].reshape(-1) if len(values) > 2 else np.arange(len(starts))
        steps = values[3].reshape(-1) if len(values) > 3 else np.ones(len(starts), dtype=np.int64)
        notes, unsafe = [], []
        for k, axis in enumerate(axes):
            dim = shape[int(axis) % len(shape)]
            if not isinstance(dim, str) or steps[k] <= 0:
                continue
            if ends[k] < 0 or ends[k] >= np.iinfo(np.int32).max:
                continue  # an open or end-relative end bakes nothing (and needs no export size)
            if dim not in sizes.carriers:
                continue  # not a graph input's dim: no export size to compare with
            if dim not in sizes.values:
                yield self.reject(f"Slice on dynamic dim {dim}: its export size is unknown (give --trace-shape)",
                                  nodes=[node])
                continue
            size = sizes.values[dim]
            if ends[k] == size:
                ends[k] = INT64_MAX
                notes.append(f"end {size} on axis {int(axis)} is {sizes.explain(dim)}")
                if not sizes.is_solved(dim):
                    unsafe.append(_BY_VALUE.format(dims=dim))
                elif not any(c.symbol.name == dim and c.limit == size for c in caps(sizes_of(ctx))):
                    # hypotheses: the end is the dim (to the end) or the model's own length; only a consumer that
                    # needs the slice to follow the dim past the export size (`Min(T, 8) == T`) tells them apart
                    unsafe.append(f"the end is {dim} (to the end) or a fixed length {size} of the model: nothing "
                                  f"downstream needs the slice to follow {dim}")
                if len(sizes.symbols_with(size)) > 1:
                    unsafe.append(f"another dynamic dim also had size {size}: `x[:, :y.shape[1]]` may be meant")
            elif 0 < size - ends[k] < size and 0 <= starts[k] < ends[k]:
                notes.append(f"end {int(ends[k])} on axis {int(axis)} is {sizes.explain(dim)} minus "
                             f"{size - int(ends[k])}")
                unsafe.append("the end may be a deliberate fixed length rather than `n - k`")
                ends[k] = int(ends[k]) - size
        if not notes or any(b.node is node for b in baked_slices(sizes_of(ctx))):
            return  # GF007's when a constraint solves the end
        yield self.finding(
            f"Slice '{node.name}' has ends fixed at export-time sizes: " + "; ".join(notes)
            + f"; at longer inputs it silently cuts {data.name} to the export length",
            nodes=[node], tensors=[data], shapes={data.name: shape}, severity=Severity.WARNING,
            hint="`x[:, :int(x.shape[1]) - k]` or `narrow(..., int(n))` bakes the length; slice with the traced "
                 "size (`x[:, : x.shape[1] - k]`) or a negative end (`x[:, :-k]`).",
            fix=Fix(f"make Slice '{node.name}' ends relative to the end: {ends.tolist()}",
                    apply=loosened(node, set(values[1].reshape(-1).tolist()),
                                   replace_input(node, 2, [int(e) for e in ends], ctx.opset)),
                    safety=Safety.UNSAFE if unsafe else Safety.SAFE,
                    reason="; ".join(unsafe) or "the end was the full length of the sliced dynamic dim"))

    # --- Split and Pad: the information is gone --------------------------------------------------------------
    def _split(self, ctx, ev, sizes, node) -> Iterator[Finding | Rejection]:
        split = evidence.split_sizes(ev, node)
        shape = ctx.shape(node.inputs[0])
        if split is None or shape is None:
            return
        axis = int(node.attrs.get("axis", 0)) % len(shape)
        if not isinstance(shape[axis], str):
            return
        if evidence.input_dim_behind(ctx, sizes, node.inputs[0], axis) is None:  # no constraint ties it to an input dim
            yield self.reject(f"Split on dim {shape[axis]}, which no dynamic input dim is seen to set: it may be "
                              "fixed in every run (one image, four box coordinates)", nodes=[node])
            return
        yield self.finding(
            f"Split '{node.name}' splits dynamic dim {shape[axis]} of {node.inputs[0].name} into fixed sizes "
            f"{split} (sum {sum(split)}, the export-time size): onnxruntime fails at any other size with "
            "'Cannot split using values in 'split' attribute'",
            nodes=[node], tensors=[node.inputs[0]], shapes={node.inputs[0].name: shape},
            hint="A per-item Python list (`[b.shape[0] for b in boxes]`, `.tolist()`) fixed the sizes and the "
                 "number of outputs; the graph cannot be repaired. Split with a traced size (`x.split(x.shape[1] "
                 "// 2, 1)`), use narrow/slicing with traced sizes, or keep the batch in one tensor.")

    def _pad(self, ctx, ev, sizes, node) -> Iterator[Finding | Rejection]:
        data = node.inputs[0]
        shape = ctx.shape(data)
        pads = ev(node.inputs[1]) if len(node.inputs) > 1 else np.asarray(node.attrs.get("pads", []))
        if shape is None or pads is None or pads.size != 2 * len(shape):
            return
        pads = pads.reshape(-1)
        for axis, dim in enumerate(shape):
            amount = int(pads[axis] + pads[axis + len(shape)])
            if not isinstance(dim, str) or amount <= 0 or dim not in sizes.values:
                continue
            padded = sizes.values[dim] + amount
            multiple = next((m for m in (2 ** k for k in range(1, 13)) if m > amount and padded % m == 0), None)
            if multiple is None:  # a pad amount unrelated to the size (conv padding) is fine
                yield self.reject(f"pad {amount} on axis {axis} does not round {dim} up to a multiple", nodes=[node])
                continue
            yield self.finding(
                f"Pad '{node.name}' pads dynamic dim {dim} of {data.name} by a constant {amount}, which rounds "
                f"{sizes.explain(dim)} up to a multiple of {multiple}: the amount was computed in Python "
                "(math.ceil on a size) and is wrong at every other length",
                nodes=[node], tensors=[data], shapes={data.name: shape}, severity=Severity.WARNING,
                hint=f"The pad amount is gone from the graph; compute it from the traced size without int() or "
                     f"math.ceil: `pad = (-x.shape[{axis}]) % {multiple}; F.pad(x, (0, pad))`, and re-export.")

    # --- shapes linked to an input by value only -------------------------------------------------------------
    def _value_only(self, ctx, ev, sizes, node) -> Iterator[Finding | Rejection]:
        index = VALUE_ONLY[node.op]
        if len(node.inputs) <= index or not (node.inputs[index].name or isinstance(node.inputs[index], gs.Constant)):
            return
        value = ev(node.inputs[index])
        # shape arithmetic (a ConstantOfShape of ones the exporter folds into an Expand shape) is not data
        if value is None or (node.op == "ConstantOfShape" and ev(node.outputs[0]) is not None
                             and np.issubdtype(ev(node.outputs[0]).dtype, np.integer)):
            return
        flat = [int(v) for v in value.reshape(-1)] if value.size else []
        entries: list[int | tuple[gs.Tensor, int]] = list(flat)
        notes = []
        for j, v in enumerate(flat):
            cands = evidence.carriers_of(sizes, v) if v > 1 and v == value.reshape(-1)[j] else []
            if len(cands) == 1:
                entries[j] = sizes.carriers[cands[0]]
                notes.append(f"{v} equals {sizes.explain(cands[0])}")
            elif len(cands) > 1:
                yield self.reject(f"{v} matches several dynamic dims ({', '.join(cands)})", nodes=[node])
        if not notes:
            return
        role = {"ConstantOfShape": "shape", "Tile": "repeats", "Range": "limit", "Resize": "sizes"}[node.op]
        scalar = node.op == "Range"
        yield self.finding(
            f"{node.op} '{node.name}' has a constant {role} {flat if not scalar else flat[0]}: " + "; ".join(notes)
            + "; the output keeps that size at every input size",
            nodes=[node], tensors=[node.inputs[index]], severity=Severity.WARNING,
            hint=HINT_INT + " E.g. `torch.arange(int(x.shape[1]))` -> `torch.arange(x.shape[1])`.",
            fix=Fix(f"compute {node.op} '{node.name}' {role} from the input's shape",
                    apply=loosened(node, set(flat), replace_input(node, index, entries, ctx.opset, scalar=scalar,
                                                                   like=value)),
                    safety=Safety.UNSAFE, reason="linked to the input's dim by equal value only"))



def _entry_text(entry) -> str:
    return f"entry {entry.index} ({entry.value} = {show(entry.expr)})"


def _shape_fix(ctx: RuleContext, node: gs.Node, target: list[int], entries, safety: Safety, reason: str) -> Fix:
    """Compute the shape input of a Reshape or Expand from `entries` (ints, or (tensor, axis) read at run time)."""
    rebuild = replace_input(node, 1, entries, ctx.opset)
    return Fix(f"compute {node.op} '{node.name}' shape at run time: {evidence.show_entries(entries)}",
               apply=loosened(node, evidence.changed_values(target, entries), rebuild), safety=safety, reason=reason)
