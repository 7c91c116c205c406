"""GF003 broadcast-mismatch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.broadcast import (
    BAD_PAIRS,
    BROADCAST_OPS,
    Dim,
    Pair,
    alignments,
    as_declared,
    closest_to_right,
    distinct_shapes,
    doubtful,
    fixed_by_placing,
    input_dim_names,
    leading_match,
    merge_shape,
    operand_pairs,
    over_budget,
    placed_shape,
)
from graphfix.analysis.broadcast_text import (
    capped,
    describe_operands,
    floored,
    operand_labels,
    pairs_text,
    show_dim,
    show_shape,
    when_it_runs,
)
from graphfix.analysis.context import RuleContext
from graphfix.analysis.sizes import own_floors, sizes_of
from graphfix.core.rule import Finding, Fix, Rejection, Rule, Safety, Severity, known
from graphfix.io.sources import known_values

MAX_GRAPH_PAIRS = 1_000_000  # pairs of distinct shapes over the whole graph; past it GF003 stops, saying where

MASK_HINT = (
    "Replace `x[mask] = value` with `x = x.masked_fill(mask.unsqueeze(-1), value)` (transformers: "
    "`hidden_states[~attention_mask] = 0.0` -> `hidden_states = hidden_states.masked_fill("
    "~attention_mask.unsqueeze(-1), 0.0)`); the dynamo exporter (dynamo=True) exports `x[mask] = value` "
    "correctly, as ScatterND."
)
AMBIGUOUS_HINT = (
    "Say which axes the mask is for: a key-padding mask on attention scores [B, T, T] is "
    "`scores.masked_fill(mask[:, None, :], value)`; a mask of rows (`x[mask] = value`) is "
    "`x.masked_fill(mask.unsqueeze(-1), value)`. `graphfix repair --unsafe-fixes` applies the rewrite offered here, "
    "which keeps what the original computes where it runs."
)
BAKED_HINT = (
    "A size was captured as a constant while tracing (a table sliced or built with a Python int, int()/math.ceil/"
    ".item() on a size); keep it a tensor, e.g. `self.pe[:, : x.size(1)]` under torch.jit.trace is still dynamic, "
    "`self.pe[:, : int(x.size(1))]` is not. GF004/GF006 (trace-baked-shape/-constant) locate and repair baked sizes. "
    "If the model takes that one size only (timm's LeViT holds attention biases of one image size), the dims are "
    "not dynamic: fix them with `graphfix set-shape` and repair that."
)
WINDOW_HINT = (
    "If the model takes only {least} (PyTorch fails below too), the window is its own: `graphfix repair --skip "
    "GF003,GF006 --shape NAME=DIMS` with sizes from there writes it, checked at them. Otherwise slice with the traced "
    "size (`x[:, 2:]`, not `x[:, 2:int(x.size(1))]`) and re-export; GF006 (trace-baked-constant) locates the constant."
)
GENERIC_HINT = (
    "Check these operand shapes in PyTorch and make the broadcast explicit (unsqueeze/view/expand) so the dims "
    "line up from the right. If one size was captured at trace time, see GF004 and GF006."
)


class BroadcastMismatch(Rule):
    """Elementwise ops and Where whose operand shapes cannot broadcast for valid input sizes.

    ## What it does
    Checks every numpy-broadcasting op (Add, Sub, Mul, Div, Pow, Mod, Max, Min, Mean, Sum, Equal, Less, Greater,
    And, Or, Xor, Bitwise*, Where) on symbolic shapes. Shapes are aligned from the right, as ONNX and onnxruntime
    do; a pair of dims is a mismatch when both are different static sizes other than 1, when a static size meets
    a dynamic input dim (it then runs only at that size), or when two different input dims are mis-aligned (the
    condition's `T` sits under the data's `C` while the data has its own `T` one axis to the left).

    Two causes are told apart. *Rank misalignment*: a lower-rank operand whose dims are the leading dims of the
    other one, the mark of `x[mask] = value` with a bool mask of lower rank. *A size captured at trace time*: a
    static dim against a dynamic one, e.g. a positional table cut at the export length; GF006 owns that fix. A
    window that holds that size once a length reaches a number (`x[:, 2:14]` against a learned [12, 8] weight: from
    T = 14 on) is reported with both readings, the model's own window or a number the export kept (a length traced
    through Python, a branch torch.export took without its guard): the graph does not tell them apart (helpers 147
    and 152), and the finding says how to write a model that takes only those sizes.

    ## Why it breaks deployment
    The TorchScript exporter (`dynamo=False`, every opset) turns `x[mask] = 0` with `mask[B,T]` and `x[B,T,C]`
    into `Where(mask, 0, x)`. PyTorch's indexing puts the mask on the leading dims; ONNX broadcasting puts it on
    the trailing ones, so onnxruntime fails even at the export size: `Attempting to broadcast an axis by a
    dimension other than 1. 768 by 100`, or `condition operand cannot broadcast on dim 1 Condition Shape:
    {1,100}, X Shape: {}, Y Shape: {1,100,768}` (fairseq HuBERT #5595, transformers wav2vec2 #10004). A table cut at
    the export length fails at every other length: `Add ... 6400 by 24960` (APGCC #22), `211 by 421` (espnet_onnx
    #88). The dynamo exporter emits the index_put as ScatterND, which works.

    ## Example
    ```python
    x[padding_mask] = 0                                   # Where(mask[B,T], 0, x[B,T,C]): fails in onnxruntime
    x = x.masked_fill(padding_mask.unsqueeze(-1), 0)      # Where(mask[B,T,1], 0, x[B,T,C]): fine
    scores = torch.where(key_mask, -1e9, scores)          # Where(mask[B,T], -1e9, scores[B,T,T]): ambiguous
    ```
    The last one runs only at batch 1, where it masks keys; whether `[B, T]` means keys (`mask[:, None, :]`) or
    queries (`mask[..., None]`) cannot be told from the graph.

    ## Fix safety
    For rank misalignment the fix unsqueezes the trailing axes of the lower-rank operand (`mask[..., None]`).
    It is safe on a Where condition whose dims provably equal the leading dims of the data (the same symbolic
    dims, laid on them in one way only): that is exactly what PyTorch's index_put with a bool mask means. It is
    unsafe when the dims fit the data's in more than one way (`[B, T]` on `[B, T, T]`): the fix offered then
    keeps each dim where onnxruntime puts it except those that pair wrongly (`mask[:, None, :]`), so it computes
    what the original computes where it runs (batch 1). It is unsafe when the proof rests on equal static sizes
    (they may be trace-time sizes that only coincide), and for other ops and Where's X/Y operands, where PyTorch
    aligns trailing dims too and leading alignment is a guess of intent. Static-vs-dynamic
    conflicts are reported without a fix: GF004/GF006 (trace-baked-shape/-constant) repair the baked size.
    """

    code = "GF003"
    name = "broadcast-mismatch"
    severity = Severity.ERROR
    fixable = True
    runtime_ops = frozenset({"Where"})
    runtime_messages = (r"Attempting to broadcast an axis by a dimension other than 1", r"cannot broadcast")
    runtime_order = 40
    runtime_hint = ("Operands broadcast on trailing dims: a lower-rank mask (x[mask] = 0) needs its missing axis, "
                    "e.g. masked_fill(mask.unsqueeze(-1), 0).")
    traced_values = True
    knowledge = (
        known(r"condition operand cannot broadcast on dim \d+",
              "onnxruntime Where: the condition (mask) does not broadcast against the data",
              "`x[mask] = value` (index_put with a bool mask of lower rank) exported as Where(mask[B,T], value, "
              "x[B,T,C]); ONNX broadcasting aligns the mask with the trailing dims [T,C], not the leading ones.",
              "Write `x = x.masked_fill(mask.unsqueeze(-1), value)`, or let `graphfix repair` unsqueeze the mask.",
              reports="fairseq #5595/#5596 (HuBERT), transformers #10004 (wav2vec2)"),
        known(r"Attempting to broadcast an axis by a dimension other than 1",
              "onnxruntime: two operands of an elementwise op have different sizes on one axis",
              "Either a lower-rank mask aligned with the wrong axes (index_put), or a size captured as a constant at "
              "export time (a positional table or buffer sliced at the export length) meeting a dynamic dim.",
              "Keep sizes as tensors (no int()/.item()/math on x.shape); index masks with `.unsqueeze(-1)`. "
              "`graphfix diagnose` names the node and says which of the two it is.",
              reports="espnet_onnx #88, APGCC #22, transformers #9044"),
    )

    def detect(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        inputs = input_dim_names(ctx.model)
        refined: dict[str, list[Dim] | None] | None = None
        least: dict = {}  # the sizes torch.export traced for: `x[:, 2:14]` is 12 long from T = 14 on (own_floors)
        # Tensors downstream of a reported mismatch: their inferred dims are an artefact of it (onnx infers
        # broadcast(T, 5) as 5), so they must not raise a second finding for the same cause.
        tainted: set[int] = set()
        pairs_left = MAX_GRAPH_PAIRS
        for node in ctx.graph.nodes:  # in graph order, which ONNX requires to be topological
            upstream = [t for t in node.inputs if id(t) in tainted]
            if upstream:
                tainted.update(id(t) for t in node.outputs)
            if node.op not in BROADCAST_OPS:
                continue  # only numpy-broadcasting ops
            operands = [t for t in node.inputs if t.name or isinstance(t, gs.Constant)]
            if len(operands) < 2:
                continue  # nothing to broadcast against
            coarse = [ctx.shape(t) for t in operands]
            if (over := over_budget(coarse)) is not None:
                yield self.reject(over, nodes=[node])
                continue
            pairs_left -= (n := len(distinct_shapes(coarse))) * (n - 1) // 2
            if pairs_left < 0:
                yield self.reject(f"the graph's broadcasting ops pair more than {MAX_GRAPH_PAIRS:,} operand shapes: "
                                  "GF003 stopped here and checked no node from this one on", nodes=[node])
                return
            if all(s is not None for s in coarse) and not doubtful(coarse, inputs):
                continue  # onnx's shapes already broadcast
            if refined is None:  # one symbolic size analysis per graph, only once a candidate needs it
                refined, least = sizes_of(ctx), own_floors(ctx)
            shapes = [merge_shape(refined.dims(t, least), s) for t, s in zip(operands, coarse, strict=True)]
            shapes = as_declared(ctx, node, shapes, inputs)
            if any(s is None for s in shapes):
                yield self.reject("an operand's rank is unknown", nodes=[node])
                continue
            if upstream:
                shapes = [[None] * len(s) if id(t) in tainted else s for t, s in zip(operands, shapes, strict=True)]
            found = list(self._check(ctx, node, operands, shapes, inputs))
            if upstream and not any(isinstance(f, Finding) for f in found):
                found = [self.reject(f"'{upstream[0].name}' comes after a mismatch reported upstream; checked again "
                                     "once that one is fixed", nodes=[node])]
            if any(isinstance(f, Finding) for f in found):
                tainted.update(id(t) for t in node.outputs)
            yield from found

    def _check(self, ctx, node, operands, shapes, inputs) -> Iterator[Finding | Rejection]:
        if (over := over_budget(shapes)) is not None:  # the size analysis can tell apart what onnx's shapes did not
            yield self.reject(over, nodes=[node])
            return
        pairs = operand_pairs(shapes, inputs)
        bad = [p for p in pairs if p[-1] in BAD_PAIRS]
        if not bad:
            # only dims that may be equal at run time (two different names, an unknown dim)
            a, b = next(((p[3], p[4]) for p in pairs if p[-1] is Pair.UNKNOWN), (None, None))
            yield self.reject(f"dims {show_dim(a)} and {show_dim(b)} differ but may be equal at run time", nodes=[node])
            return
        if all(capped(p[3], p[4]) for p in bad):
            yield self.reject(f"{capped(bad[0][3], bad[0][4])}: a length cap, GF006 (trace-baked-constant) reports it",
                              nodes=[node])
            return
        labels = operand_labels(node, operands)
        shape_map = {t.name: s for t, s in zip(operands, shapes, strict=True)}
        ref = max(range(len(shapes)), key=lambda i: len(shapes[i]))
        # each operand of a lower-rank shape in a bad pair (`operand_pairs` pairs the first of each shape)
        lower_shapes = {tuple(shapes[i]) for p in bad for i in p[:2] if len(shapes[i]) < len(shapes[ref])}
        lower = [i for i, s in enumerate(shapes) if tuple(s) in lower_shapes]
        proofs = [leading_match(shapes[i], shapes[ref]) for i in lower]
        rank = len(shapes[ref])
        # every way each lower-rank operand's dims fit the reference's; the one closest to onnxruntime's placement
        choices = {i: alignments(shapes[i], shapes[ref]) for i in lower}
        placed = {i: closest_to_right(choices[i], len(shapes[i]), rank) for i in lower if choices[i]}
        if lower and all(ok for ok, _ in proofs) and fixed_by_placing(shapes, placed, rank, inputs):
            static_axes = sorted({a for _, axes in proofs for a in axes})
            ambiguous = {i: choices[i] for i in lower if len(choices[i]) > 1}
            fix = self._unsqueeze_fix(ctx, node, lower, shapes, ref, labels, static_axes, placed, ambiguous)
            if ambiguous:
                options = "; ".join(f"{labels[i]} on axes {' or '.join(map(str, c))}" for i, c in ambiguous.items())
                why = (f", so it {when_it_runs(bad)}. Its dims fit {labels[ref]}'s in more than one way ({options}): "
                       "the leading dims, as `x[mask] = value` exports with the TorchScript exporter, or a mask over "
                       "the last axis (key padding), which is what the original applies where it runs; which one "
                       "the model means cannot be told from the graph.")
            else:
                why = (f"; yet its dims are the leading dims of {labels[ref]} (a lower-rank bool mask, as `x[mask] = "
                       f"value` exports with the TorchScript exporter), so it {when_it_runs(bad)}.")
            yield self.finding(
                f"{node.op} '{node.name}' aligns {describe_operands(labels, operands, shapes, lower)} with "
                f"{labels[ref]} '{operands[ref].name}' {show_shape(shapes[ref])} from the right, pairing "
                f"{pairs_text(bad)}{why}",
                nodes=[node], tensors=operands, shapes=shape_map, fix=fix,
                hint=AMBIGUOUS_HINT if ambiguous else MASK_HINT if node.op == "Where" else GENERIC_HINT,
            )
            return
        pinned = [p for p in bad if p[-1] is Pair.PINNED]
        if pinned:
            i, j, axis, a, b, _ = pinned[0]
            static, dynamic = (i, j) if isinstance(a, int) else (j, i)
            size, dim = (a, b) if isinstance(a, int) else (b, a)
            if (floor := floored(dim, size)) and len(pinned) == len(bad) == 1:
                yield self.finding(
                    f"{node.op} '{node.name}': {labels[static]} '{operands[static].name}' {show_shape(shapes[static])}"
                    f" has static size {size} on axis {axis} where {labels[dynamic]} '{operands[dynamic].name}' "
                    f"{show_shape(shapes[dynamic])} has {dim}, which is {size} once {floor}: it runs only there (and "
                    f"where {dim} is 1). A window of the model's own, if the model takes only {floor}, or a number "
                    "the export kept (a length traced through Python, a branch torch.export took at the export "
                    "size): the graph does not tell which.",
                    nodes=[node], tensors=operands, shapes=shape_map, hint=WINDOW_HINT.format(least=floor))
                return
            yield self.finding(
                f"{node.op} '{node.name}': {labels[static]} '{operands[static].name}' {show_shape(shapes[static])} has "
                f"static size {size} on axis {axis} where {labels[dynamic]} '{operands[dynamic].name}' "
                f"{show_shape(shapes[dynamic])} has the dynamic dim {dim}, so it {when_it_runs(bad)}: a size captured "
                "at export time (trace-baked); GF006 (trace-baked-constant) handles the fix.",
                nodes=[node], tensors=operands, shapes=shape_map, hint=BAKED_HINT,
            )
            return
        yield self.finding(
            f"{node.op} '{node.name}': operand shapes "
            + ", ".join(f"{labels[k]} {show_shape(shapes[k])}" for k in range(len(shapes)))
            + f" cannot broadcast: right-aligned they pair {pairs_text(bad)}, so it {when_it_runs(bad)}.",
            nodes=[node], tensors=operands, shapes=shape_map, hint=GENERIC_HINT,
        )

    def _unsqueeze_fix(self, ctx, node, lower, shapes, ref, labels, static_axes, placed, ambiguous) -> Fix:
        rank = len(shapes[ref])
        padded = {i: placed_shape(shapes[i], placed[i], rank) for i in lower}
        names = ", ".join(f"{labels[i]} {show_shape(shapes[i])} -> {show_shape(padded[i])}" for i in lower)
        trailing = all(placed[i] == tuple(range(len(shapes[i]))) for i in lower)
        summary = (f"unsqueeze the trailing axes of {names} in {node.op} '{node.name}'" if trailing else
                   f"unsqueeze {names} in {node.op} '{node.name}'")
        if ambiguous:
            moved = [str(d) for i in lower for d, a, r in zip(shapes[i], placed[i], range(rank - len(shapes[i]), rank),
                                                             strict=True) if a != r]
            safety, reason = Safety.UNSAFE, (
                "the mask's dims fit the data's on several axes, so its meaning is ambiguous; this fix keeps "
                f"each dim where onnxruntime places it but {', '.join(moved)}, so it computes what the original "
                f"computes where it runs ({' and '.join(f'{d} = 1' for d in moved)}); masking the leading dims "
                "instead would change those results")
        elif node.op != "Where" or lower != [0]:
            safety, reason = Safety.UNSAFE, (
                f"for {node.op} {'X/Y' if node.op == 'Where' else 'operands'} PyTorch aligns trailing dims too; "
                "aligning the leading dims is a guess of what the model meant")
        elif static_axes:
            dims = ", ".join(str(shapes[ref][a]) for a in static_axes)
            safety, reason = Safety.UNSAFE, (
                f"the condition matches the data's leading dims only as static sizes ({dims}) on axes "
                f"{static_axes}; if those are trace-time sizes the mask may belong to other axes")
        else:
            safety, reason = Safety.SAFE, (
                "the condition's dims are the data's leading dims (same symbolic dims), so mask[..., None] is "
                "exactly PyTorch's index_put with a bool mask")
        axes = {i: [a for a in range(rank) if a not in placed[i]] for i in lower}
        return Fix(summary, apply=_built_as_said(_unsqueeze(node, axes, ctx.opset), node, padded), safety=safety,
                   reason=reason)


def _built_as_said(apply, node: gs.Node, padded: dict[int, list[Dim]]):
    """`apply`, then the size analysis of the rewritten graph must give each operand the shape the finding states
    (`[B, T] -> [B, T, 1]`): a rewrite that builds something else (`mask[:, :1]`, right only where T is 1) fails."""
    def run(graph: gs.Graph) -> None:
        apply(graph)
        from graphfix.analysis.sizes.core import Sizes

        sizes = Sizes(graph, lambda t: known_values(t) if isinstance(t, gs.Constant) else None, budget_s=3.0)
        for index, want in padded.items():
            got = sizes.shape(node.inputs[index])
            if got is None or len(got) != len(want):
                continue
            for built, said in zip(got, want, strict=True):
                if built is None or not isinstance(said, int | str) or (isinstance(said, str) and said not in
                                                                         {s.name for s in built.free_symbols}):
                    if isinstance(said, str) and built is not None and built.is_number:
                        raise ValueError(f"the rewrite gives {node.inputs[index].name} {list(got)}, the finding "
                                         f"says {show_shape(want)}")
                    continue
                if (isinstance(said, int) and built != said) or (isinstance(said, str) and str(built) != said):
                    raise ValueError(f"the rewrite gives {node.inputs[index].name} {list(got)}, the finding says "
                                     f"{show_shape(want)}")
    return run


def _unsqueeze(node: gs.Node, axes_of: dict[int, list[int]], opset: int):
    def apply(graph: gs.Graph) -> None:
        for index, axes in axes_of.items():
            tensor = node.inputs[index]
            out = gs.Variable(f"{tensor.name}_gf003_unsqueezed", dtype=tensor.dtype)
            if opset >= 13:
                axes_const = gs.Constant(f"{node.name}_gf003_axes_{index}", np.array(axes, dtype=np.int64))
                unsq = gs.Node("Unsqueeze", f"{node.name}_gf003_unsqueeze_{index}", inputs=[tensor, axes_const],
                               outputs=[out])
            else:
                unsq = gs.Node("Unsqueeze", f"{node.name}_gf003_unsqueeze_{index}", attrs={"axes": axes},
                               inputs=[tensor], outputs=[out])
            graph.nodes.append(unsq)
            node.inputs[index] = out

    return apply
