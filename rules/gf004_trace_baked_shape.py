"""GF004 trace-baked-shape."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis import export_sizes as evidence
from graphfix.analysis.baked_shapes import (
    Entries,
    constant_target,
    entry_text,
    expand_entries,
    reshape_candidates,
    reshape_entries,
    rounded_pads,
    slice_ends,
    solved_entries,
    value_entries,
)
from graphfix.analysis.context import RuleContext
from graphfix.analysis.edits import loosened, rebuilt_entries, replace_input, size_expr
from graphfix.analysis.sizes import (
    baked_expands,
    baked_reshapes,
    baked_slices,
    broadcast_only,
    held_reshapes,
    partly_constant,
    sizes_of,
)
from graphfix.core.rule import Choice, Finding, Fix, Rejection, Rule, Safety, Severity, known

VALUE_ONLY = {"ConstantOfShape": 0, "Tile": 1, "Range": 1, "Resize": 3}  # shape-carrying input index
HINT_CHOICE = " `graphfix repair` builds each and applies one only if the proof accepts it alone."
HINT_EXPORT = (" Where the graph does not tell which constants follow the input (patch counts or patch sizes), "
               "`graphfix.export(module, args, path, ...)` traces the module at other sizes and rebuilds the ones "
               "that move.")
HINT_INT = ("A size went through Python while tracing (`int(x.shape[i])`, `.item()`, `.tolist()`, a literal batch): "
            "pass the traced size itself (`x.shape[i]`, `x.size(i)`) or use -1 / `expand(-1, ...)`.")


class TraceBakedShape(Rule):
    """Export-time sizes of dynamic dims captured as constants in Reshape/Expand/Slice/... shape inputs.

    ## What it does
    Finds constants in shape-carrying inputs (Reshape shape, Expand shape, Slice ends, Range limit, ConstantOfShape,
    Tile repeats, Split sizes, Pad pads, Resize sizes) whose values are the export-time sizes of dims the graph declares
    dynamic. The sizes come from `--trace-shape NAME=2x400`, else from the graph's own constraints, solved by the size
    analysis: a Reshape whose element count holds at one size only (an input's, a length strided Convs derive from one,
    or a grid of patches' token count, `floor(H / 8) * floor(W / 8)` in a ViT's `nn.MultiheadAttention` pooling head, an
    unsafe fix, or input sizes met only as their product, `reshape(B, C, int(H) * int(W))`, or flattened with others,
    `flatten(1).view(B, int(T), D)`), an Expand or an elementwise op meeting a dynamic dim with a constant one, Split
    sizes. Where nothing tells the sizes and a constant target's element count is fixed, the one entry its readers do
    not hold at one size (a Linear holds the last) takes what the input's count leaves: `reshape(int(B) * int(T), D)`
    becomes `[-1, D]`, whatever B and T were at export. (Constant *tensors* cut at an export size are GF006's.)

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

    ## Fix safety Safe when a constraint of the graph pins the size (a solved element count, an Expand or a broadcast
    against the dim, Split sizes) and the constant stands for that dim; not where a broadcast alone holds an entry of a
    constant Expand shape (a count of the model's own that a size of 1 broadcasts against fits too). For a solved
    element count, each constant entry's hypotheses (graphfix.analysis.hypotheses: `T`, `T // k`, `2*T`, ...) must keep
    the count beyond the export size (an entry of 1 where pooled: `reshape(B, 11, int(T) // 11, D).mean(2)` at T = 11
    bakes `[B, 11, 1, D]`, the 11 T or the 1 T // 11), and an output dim declared dynamic that a choice would keep
    fixed rules it out: `reshape(B, int(T) // 3, 12)` traced at T=6 with the output declared `[B, G]` is `T // 3`, not
    `2*T`. An entry the analysis proposes that these hypotheses do not leave is not repaired. A Slice end equal to a
    solved size is safe only where a consumer needs the slice to follow the size (otherwise it may be the model's own
    length). A constant that only equals a size given with `--trace-shape` (or guessed from the constant) may be the
    model's own: `Reshape(x[B, 8], [2, -1, 4])` runs at every B, and rewriting it changes a healthy model; such fixes,
    and Slice ends equal to a given length, are unsafe and the finding a warning (an error where the target has no -1
    and no 0: its element count is fixed while the input's varies, baked whichever entry is the size, and wherever
    onnxruntime confirms the failure), as is a new axis an Expand makes that only equals a given size
    (`repeat_interleave(x, 2, 1)` traced at batch 2, once GF002 made its Tile an Expand). Unsafe also when the link is
    by value only, or two dynamic dims had the same export size; when the size is a grid's token count (a model keeping
    20 slots or a 4 x 5 grid whatever its input, by a pool or a repeat sized in Python on the way, leaves the same
    graph); when an op before the Reshape does nothing by its constants (a Pad by zeros, a Tile by ones, a 1 x 1 pool:
    what a pad to 20 slots traced at 20 leaves); and when a pool before it changes a length (it has no weights: its
    kernel may be sized in Python to keep a count). Where several entries could stand for the size (MultiheadAttention
    traced at a length equal to its head size), `repair` builds each and applies one only if the proof accepts it alone.
    Not fixable: Split sizes (the number of outputs is fixed) and pad amounts computed in Python. """

    code = "GF004"
    name = "trace-baked-shape"
    severity = Severity.ERROR
    fixable = True
    runtime_ops = frozenset({"Reshape", "Expand", "Split", "Slice", "Tile", "ConstantOfShape", "Range", "MatMul",
                             "Gemm"})
    runtime_messages = (r"MatMul dimension mismatch", r"Non concat axis dimensions must match")
    runtime_order = 30
    runtime_hint = ("A size was baked into a shape constant at export time; compute it from the input (x.shape / "
                    "Shape ops) or use -1, and re-export with dynamic axes." + HINT_EXPORT + " If the model takes "
                    "only sizes a Reshape splits into whole chunks (`nn.PixelUnshuffle(2)` takes even sizes, and "
                    "PyTorch fails at the others too), give such sizes with --shape: the graph of a pad to a "
                    "multiple that the trace dropped with its branch (`if T % 8: F.pad`) looks the same. If it "
                    "takes one size only (a grid read from its configuration, timm's CoaT at `img_size=64`: helper "
                    "114), the dims are not dynamic: fix them with `graphfix set-shape` and repair that.")
    traced_values = True

    @classmethod
    def baked_entries(cls, sizes, choices: dict[str, int]):
        """Each baked Reshape entry with one candidate expression, or the one the repair chose; none while ambiguous."""
        return solved_entries(sizes, choices)

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
        held: set[int] = set()  # Reshapes the broadcasts after them hold: `_reshape` has nothing to add
        yield from self._solved_expands(ctx, ev, held)
        by_op = {"Reshape": self._reshape, "Expand": self._expand, "Slice": self._slice, "Split": self._split,
                 "Pad": self._pad, **dict.fromkeys(VALUE_ONLY, self._value_only)}
        for node in ctx.graph.nodes:
            if node.op in by_op and id(node) not in held:
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
        found = reshape_candidates(sizes, baked, ctx.options.choices.get(node.name))
        if found.wrong:
            return self.finding(
                f"{message}; the analysis proposes {entry_text(found.wrong[0])}, which the graph's constraints do "
                f"not leave (they leave {', '.join(entry_text(d) for d in found.left) or 'nothing'}): not repaired",
                **kwargs, hint=HINT_INT)
        entries, doubt = found.entries, found.doubt
        if len(entries) != 1:  # none rebuildable, or several that fit: the proof chooses, if one alone passes
            labels = tuple(entry_text(e) for e in entries)
            choice = Choice(node.name, tuple(e.index for e in entries), labels) if entries else None
            return self.finding(f"{message}; entries that could stand for it: {', '.join(labels) or 'none'}",
                                **kwargs, hint=HINT_INT + (HINT_CHOICE if entries else HINT_EXPORT), choice=choice)
        entry = entries[0]
        rebuild = rebuilt_entries(node, 1, {entry.index: entry.expr}, sizes, ctx.opset)
        return self.finding(
            f"{message}; entry {entry.index} ({entry.value}) is {entry.expr}" + (f"; but {doubt}" if doubt else ""),
            **kwargs, hint=HINT_INT,
            fix=Fix(f"compute entry {entry.index} of Reshape '{node.name}' shape as {entry.expr} from Shape ops",
                    apply=loosened(node, {value}, rebuild, {value} if baked.product else ()),
                    safety=Safety.UNSAFE if doubt else Safety.SAFE,
                    reason=found.reason()))

    # --- Expand and Reshape shapes a broadcast right after holds (solved constraints) ------------------------
    def _solved_expands(self, ctx: RuleContext, ev, held: set[int]) -> Iterator[Finding]:
        """speechbrain's length mask `arange(T).expand(len(lengths), T) < lengths.unsqueeze(1)` bakes `[2, T]`; the
        Less meets the 2 with the batch, at B = 2 only. The entry is rebuilt from the operand that meets it (unsafe
        in a constant shape: `broadcast_only`); so are a constant Reshape's entries that broadcasts meet where its
        count then holds at every size (`h.view(int(B), int(T), D) + x`, sizes.held). Others: `_expand`, `_reshape`."""
        wanted = {id(n) for n in ctx.graph.nodes if (n.op == "Expand" and (partly_constant(ev.elems(n.inputs[1]))
                                                                           or max(constant_target(ev, n) or [0]) > 1))
                  or (n.op == "Reshape" and (t := constant_target(ev, n)) is not None and min(t, default=0) > 0)}
        if not wanted:
            return
        sizes = sizes_of(ctx)
        for baked in [*baked_expands(sizes), *held_reshapes(sizes)]:
            node, entries = baked.node, baked.entries
            near = {e.index: e.near or node.inputs[0] for e in entries}  # what meets each entry carries it
            if id(node) not in wanted or not all(size_expr(None, sizes, e.expr, near[e.index]) for e in entries):
                continue  # no run-time source for a size: GF003 reports the broadcast
            held.add(id(node))
            consumer, which = baked.solution.constraint.node, ", ".join(str(e.expr) for e in entries)
            moves = broadcast_only(baked, partly_constant(ev.elems(node.inputs[1])))
            s, indices = "ies" if len(entries) > 1 else "y", ", ".join(str(e.index) for e in entries)
            yield self.finding(
                f"{node.op} '{node.name}' bakes {', '.join(f'{e.expr}={e.value}' for e in entries)}, export-time "
                f"size(s): entr{s} {', '.join(f'{e.index} ({e.value})' for e in entries)} of its shape meet "
                f"{which} in {consumer.op} '{consumer.name}', which holds only there; entr{s} {indices} "
                f"{'are' if len(entries) > 1 else 'is'} {which}",
                nodes=[node, consumer], tensors=[node.inputs[0], node.inputs[1]],
                shapes={node.inputs[0].name: sizes.dims(node.inputs[0])},
                hint=HINT_INT + (" E.g. `len(lengths)` -> `lengths.shape[0]`." if node.op == "Expand" else ""),
                fix=Fix(f"compute entr{s} {indices} of {node.op} '{node.name}' shape as {which} from Shape ops",
                        apply=loosened(node, {e.value for e in entries},
                                       rebuilt_entries(node, 1, {e.index: e.expr for e in entries}, sizes,
                                                       ctx.opset, near)),
                        safety=Safety.UNSAFE if moves else Safety.SAFE, moves=moves,
                        reason=f"{consumer.op} '{consumer.name}' says entr{s} {indices} "
                               f"{'are' if len(entries) > 1 else 'is'} {which} at every size, and "
                               + ("the Expand's input has no dim of its own there" if node.op == "Expand" else
                                  "the Reshape's element count then holds at every size") + (
                                   f"; but a count of the model's own fits too (`expand(-1, 2, -1)` of 2 channels), "
                                   f"which {' and '.join(sorted(moves))} = 1 broadcasts against" if moves else "")))

    # --- Reshape -------------------------------------------------------------------------------------------
    def _reshape(self, ctx, ev, sizes, node) -> Iterator[Finding | Rejection]:
        data, target_t = node.inputs[0], node.inputs[1]
        if (shape := ctx.shape(data)) is None or (target := constant_target(ev, node)) is None:
            return  # only constant targets can be baked
        found = reshape_entries(sizes, data, shape, target, int(node.attrs.get("allowzero", 0)), node.outputs[0])
        if found is None:
            return  # only the graph inputs' dynamic dims have export-time sizes to compare with
        if found.unmatched:
            yield self.finding(
                f"Reshape '{node.name}' has the constant shape {target}: its element count is fixed while "
                f"the input {data.name} {shape} varies with {', '.join(found.unmatched)}; it runs at the export "
                "size only", nodes=[node], tensors=[data, target_t], shapes={data.name: shape},
                hint=HINT_INT + " Give --trace-shape NAME=DIMS so graphfix can tell which entry is baked.")
            return
        if not found.notes:
            return
        # an error needs a solved constraint, an entry that only equals an export size may be meant; or a fixed
        # element count (no -1, no 0) over an input that varies, which is baked whichever entry stands for the size
        fixed = -1 not in target and 0 not in target
        doubt = found.doubt and not fixed
        yield self.finding(
            f"Reshape '{node.name}' {'may bake' if doubt else 'bakes'} export-time sizes into its shape {target}: "
            + "its element count is fixed while the input's varies; " * (fixed and found.doubt)
            + "; ".join(found.notes) + f"; {'if so, ' if doubt else ''}at other sizes of {data.name} {shape} "
            "onnxruntime fails ('cannot be reshaped to the requested shape') or returns a wrong shape",
            nodes=[node], tensors=[data, target_t], shapes={data.name: shape}, hint=HINT_INT,
            severity=Severity.WARNING if doubt else None,
            fix=_shape_fix(ctx, node, target, found))

    # --- Expand --------------------------------------------------------------------------------------------
    def _expand(self, ctx, ev, sizes, node) -> Iterator[Finding | Rejection]:
        data, target_t = node.inputs[0], node.inputs[1]
        if (shape := ctx.shape(data)) is None or (target := constant_target(ev, node)) is None:
            return
        found = expand_entries(sizes, shape, target)
        if not found.notes:
            return
        yield self.finding(
            f"Expand '{node.name}' bakes export-time sizes into its shape {target}: " + "; ".join(found.notes)
            + "; at other sizes onnxruntime fails or the output keeps the export size",
            nodes=[node], tensors=[data, target_t], shapes={data.name: shape},
            hint=HINT_INT + " E.g. `cls.expand(int(x.shape[0]), -1, -1)` -> `cls.expand(x.shape[0], -1, -1)`.",
            severity=Severity.WARNING if found.doubt else None,
            fix=_shape_fix(ctx, node, target, found))

    # --- Slice ---------------------------------------------------------------------------------------------
    def _slice(self, ctx, ev, sizes, node) -> Iterator[Finding | Rejection]:
        data, shape = node.inputs[0], ctx.shape(node.inputs[0])
        values = [ev(t) for t in node.inputs[1:5] if t.name or isinstance(t, gs.Constant)]
        if shape is None or len(values) < 2 or any(v is None for v in values):
            return
        found = slice_ends(ctx, sizes, shape, values)
        for why in found.rejected:
            yield self.reject(why, nodes=[node])
        notes, ends = found.notes, found.entries
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
                    safety=Safety.UNSAFE if found.unsafe else Safety.SAFE, reason=found.reason))

    # --- Split and Pad: the information is gone --------------------------------------------------------------
    def _split(self, ctx, ev, sizes, node) -> Iterator[Finding | Rejection]:
        split, shape = evidence.split_sizes(ev, node), ctx.shape(node.inputs[0])
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
        data, shape = node.inputs[0], ctx.shape(node.inputs[0])
        pads = ev(node.inputs[1]) if len(node.inputs) > 1 else np.asarray(node.attrs.get("pads", []))
        if shape is None or pads is None or pads.size != 2 * len(shape):
            return
        for axis, dim, amount, multiple in rounded_pads(sizes, shape, pads.reshape(-1)):
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
        found = value_entries(sizes, value, flat)
        for why in found.rejected:
            yield self.reject(why, nodes=[node])
        notes, entries = found.notes, found.entries
        if not notes:
            return
        role, scalar = {"ConstantOfShape": "shape", "Tile": "repeats", "Range": "limit", "Resize": "sizes"}[node.op], \
            node.op == "Range"
        yield self.finding(
            f"{node.op} '{node.name}' has a constant {role} {flat if not scalar else flat[0]}: " + "; ".join(notes)
            + "; the output keeps that size at every input size",
            nodes=[node], tensors=[node.inputs[index]], severity=Severity.WARNING,
            hint=HINT_INT + " E.g. `torch.arange(int(x.shape[1]))` -> `torch.arange(x.shape[1])`.",
            fix=Fix(f"compute {node.op} '{node.name}' {role} from the input's shape",
                    apply=loosened(node, set(flat), replace_input(node, index, entries, ctx.opset, scalar=scalar,
                                                                   like=value)),
                    safety=Safety.UNSAFE, reason="linked to the input's dim by equal value only"))


def _shape_fix(ctx: RuleContext, node: gs.Node, target: list[int], found: Entries) -> Fix:
    """Compute the shape input of a Reshape or Expand from `found.entries` (ints, or (tensor, axis) read at run
    time); unsafe where the analysis says a replacement may be wrong."""
    rebuild = replace_input(node, 1, found.entries, ctx.opset)
    return Fix(f"compute {node.op} '{node.name}' shape at run time: {evidence.show_entries(found.entries)}",
               apply=loosened(node, evidence.changed_values(target, found.entries), rebuild),
               safety=Safety.UNSAFE if found.unsafe else Safety.SAFE, reason=found.reason)
