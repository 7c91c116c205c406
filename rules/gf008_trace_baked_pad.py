"""GF008 trace-baked-pad."""

from __future__ import annotations

from collections.abc import Iterator

from graphfix.analysis.context import RuleContext
from graphfix.analysis.edits import loosened, rebuilt_entries, size_expr
from graphfix.analysis.export_sizes import export_sizes
from graphfix.analysis.same_padding import padded_windows, pads_nothing_somewhere, same_pads, window_pads
from graphfix.analysis.sizes import (
    baked_pads,
    downstream_outputs,
    fixed_length_pads,
    frozen_by_pads,
    frozen_outputs,
    sizes_if,
    sizes_of,
)
from graphfix.analysis.sizes.arith import as_expr
from graphfix.core.lazy import hypotheses, sympy  # imported on first use: see graphfix.core.lazy
from graphfix.core.rule import Finding, Fix, Rejection, Rule, Safety, Severity

HINT = ("The pad amount went through Python while tracing (`(k - int(x.shape[1]) % k) % k`): compute it from the "
        "traced size (`(k - x.shape[1] % k) % k` without int()), or pad with `F.pad` inside `torch.jit.script`.")
FIXED_HINT = ("The padded length went through Python while tracing (`math.ceil(T / k) * k - T`, TF-style 'SAME' "
              "padding with math.ceil): compute it from the traced size (`(k - T % k) % k`, `-(-T // s)` for a "
              "ceiling) or export with dynamo. If the model pads to a maximum length on purpose, declare the outputs "
              "that follow it static.")


SAME_HINT = ("TF-style 'SAME' padding computed in Python (transformers' MobileNetV1/V2 `tf_padding`: "
             "`int(x.shape[-2])`, `if in_height % stride == 0:`) keeps the export size's case under either "
             "exporter: compute it branch-free from the traced size (in all `max((-(-n // s) - 1) * s + k - n, 0)` "
             "with `n = x.shape[-2]`, half of it before), export with `graphfix.export(module, ...)`, which traces "
             "the module at other sizes and rebuilds pads that move as 'SAME' does (MobileNetV2's), or fix the size "
             "you deploy (`graphfix set-shape`). A model "
             "that pads these amounts at every size (Stable Diffusion's VAE downsampler pads (0, 1)) leaves the "
             "graph of constant amounts: then nothing is wrong.")
WHOLE_HINT = ("A pad amount `k - x % k` pads a whole k where x is a multiple of k: if the source pads under "
              "`if x % k != 0:`, the trace froze that branch; write `(k - x % k) % k` without the `if`.")


class TraceBakedPad(Rule):
    """Pads that round a length up to a multiple, computed in Python while tracing and frozen at export.

    ## What it does
    Finds a Pad by a constant p on a dynamic axis whose padded length a Reshape with -1 then splits into chunks of
    k (`[B, T + p, C] -> [B, -1, k, C]`): the size analysis reads the chunk count as `(T + p) / k`, a whole number
    only where T + p is a multiple of k. With 0 < p < k, that p is `(k - T % k) % k` at the export size; the pad
    becomes that expression, computed from Shape ops.

    ## Why it breaks deployment
    Chunked attention, window partitions and frame stacking pad a length to a multiple of the chunk size. Written
    as `pad = (k - int(x.shape[1]) % k) % k`, the amount is a Python number while tracing and the export keeps the
    export-time value. Lengths of the same residue still run; the others fail in onnxruntime (`The input tensor
    cannot be reshaped to the requested shape`).

    ## Example
    ```python
    pad = (4 - int(x.shape[1]) % 4) % 4          # baked: Pad(x, [0, 0, 0, 0, 1, 0]) at T=7
    x = F.pad(x, (0, 0, 0, pad)).reshape(b, -1, 4, c)
    ```
    Repaired with `--unsafe-fixes` (or by `graphfix.export`, where the module settles it): the amount becomes
    `Mod(3 * Shape(x)[1], 4)`, that is `(4 - T % 4) % 4`.

    It also finds a Pad whose amounts take a length to one fixed length at every size (`40 - T` added to T):
    `pad = math.ceil(T / 8) * 8 - T`, or TF-style 'SAME' padding computed with math.ceil (transformers' BiT), traced
    at one length. Longer inputs are cut to that length, shorter ones padded past what PyTorch pads. A model that
    pads to a maximum length on purpose leaves the same graph, so this is a warning; it is an error where an output
    the exporter was told is dynamic stays fixed because of it (BiT's feature map, 8 x 8 at every image size): with
    the Pad's amounts made unknown, the analysis no longer finds that output fixed.

    A third finding, a warning: a Pad by `k - x % k`, which pads a whole k where x is already a multiple of k. That
    is what `if x % k != 0: x = F.pad(x, (0, k - x % k))` leaves when the trace takes the branch at export
    (transformers' FocalNet: 9 tokens become 16 at 48 x 48); PyTorch pads nothing there. A model that always pads
    leaves the same graph, and the original runs at every size, so the proof can only follow the original.

    A fourth finding, one for the graph (graphfix.analysis.same_padding): strided Convs or Pools padded as TF-style
    'SAME' padding pads at some residues of the padded length only. Constants uneven there: (0, 1) before a 3 x 3
    stride-2 Conv is 'SAME' at even lengths, (1, 1) at odd ones. transformers' MobileNetV2 computes them in Python
    (`tf_padding`), so its TorchScript export runs wrong at odd image sizes, silently; Stable Diffusion's VAE pads
    (0, 1) at every size and leaves the same graph: a warning. An error where the graph also pads a window by zeros,
    as MobileNetV2's 1 x 1 Convs: a pad computed from the size that needed none (a model that writes its pads writes
    none there), for a window 'SAME' pads nothing before at some length (reaching no further than its stride; a
    3 x 3 stride-2 Conv is padded by 1 at least, so a Pad by zeros there, an `nn.ZeroPad2d(0)`'s, is no such
    evidence: helper 156); and an error where the amounts vary with the size yet are 'SAME' at some residues only:
    torch.export keeps one branch of `if n % s == 0:` (MobileNetV1's `max(3 - n % 2, 0)`, a whole 3 at even n where
    'SAME' pads 1; red team 155). A window's own uneven pads count as a Pad (the dynamo exporter merges one into the
    Conv), and so do an opset-10 Pad's. Pads are 'SAME' where the window reads what 'SAME' makes it read, at the
    same offset and as many times: (0, 1) before a 2-wide window of stride 2 is (0, 0) at even lengths, whose padded
    element is never read (red team 156). Where the export size is known, constants that are not 'SAME' there are
    not reported. Even constants are not: an odd export size's (1, 1) is a plain `padding=1`'s too, and
    speechbrain's 'same' pads (1, 1) at every size for stride 2, beside kernel-1 Convs padded by zeros.

    ## Fix safety
    A Pad to a fixed length is not repaired: which round-up (or maximum) the model computes is not in the graph.
    Nor is a 'SAME'-looking Pad: the original runs at every size, and only the module tells a pad computed from the
    size from one the model always pads (`graphfix.export`, which traces it at other sizes, rebuilds MobileNetV2's).
    A round-up by a constant is not determined by the graph, and so never safe: of the amounts equal to the
    constant at the export length (graphfix.analysis.hypotheses, `(k - T % k) % k` and `k - T % k` for every k
    among them), those that make every length a whole number of chunks always include two, the round-up and
    `k - T % k`, which pads a whole k where T is a multiple already (both pad 3 at T=17; at T=20 one pads 0, the
    other 4). Rounding up to a multiple of the chunk's multiples fits as well wherever it gave the same constant
    (`(8 - T % 8) % 8` is 1 at T=7, like `(4 - T % 4) % 4`), and gives more chunks elsewhere; where the export
    length is unknown, every length it may have had counts. The finding lists them; `--unsafe-fixes` applies the
    round-up to the Reshape's own chunk, and `graphfix.export` keeps it where the module agrees at its probe
    sizes, which tell the two apart only where one of them is a multiple of the chunk: among them the first
    multiple of 16 from 5 times the example's length, so chunks of 2, 4, 8 and 16 always show; other chunks only
    where a probe happens to fall on a multiple.
    """

    code = "GF008"
    name = "trace-baked-pad"
    severity = Severity.ERROR
    fixable = True
    traced_values = True

    @classmethod
    def baked_entries(cls, sizes, choices: dict[str, int]):
        """Each pad amount F.pad computed from constants: the whole folded vector, 0 the least amount."""
        return [(pad.node, 1, pad.position, pad.value, pad.expr,
                 tuple(int(v) for v in sizes.value(pad.node.inputs[1])), 0) for pad in baked_pads(sizes)]

    def detect(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        sizes = sizes_if(ctx, "Pad")
        reported: set[int] = set()  # Pads a finding above names: the 'SAME' reading adds nothing to them
        for baked in baked_pads(sizes) if sizes else ():
            reported.add(id(baked.node))
            yield self._finding(ctx, sizes, baked)
        by_node: dict[int, list] = {}
        for pad in fixed_length_pads(sizes) if sizes else ():
            by_node.setdefault(id(pad.node), []).append(pad)
        for key, pads in by_node.items():
            reported.add(key)
            yield self._fixed_finding(ctx, sizes, pads)
        for node, whole in _whole_window_pads(sizes) if sizes else ():
            reported.add(id(node))
            yield self._whole_window_finding(sizes, node, whole)
        padded = list(window_pads(sizes or sizes_of(ctx))) if sizes or padded_windows(ctx.graph) else []
        same = list(same_pads([p for p in padded if id(p[0]) not in reported],
                              lambda: export_sizes(ctx, ctx.evaluator).values))
        if same:
            yield self._same_finding(same, [node for node, window, shape, amounts in padded if node and not any(amounts)
                                            and pads_nothing_somewhere(window, len(shape) - 2)])
        if sizes and sizes.incomplete:
            yield self.reject(sizes.incomplete + "; later Pads were not checked (analysis incomplete)")

    def _fixed_finding(self, ctx: RuleContext, sizes, pads) -> Finding:
        node = pads[0].node
        taken = ", ".join(f"axis {p.axis} ({p.length}) to {p.padded}" for p in pads)
        amounts = ", ".join(f"{p.padded} - {p.length if p.length.is_Symbol else f'({p.length})'}" for p in pads)
        message = (f"Pad '{node.name}' takes {taken} at every size: its amounts are {amounts}, a length computed in "
                   "Python while tracing (math.ceil, 'SAME' padding) or a pad to a maximum; longer inputs are cut")
        fed = downstream_outputs(sizes, node)
        frozen = [f for f in frozen_outputs(sizes) if f.name in fed]
        frozen = frozen_by_pads(ctx.model, pads, frozen) if frozen else []
        if frozen:
            stays = ", ".join(f"'{f.name}' axis {f.axis} ({f.dim}) stays {f.value}" for f in frozen)
            return self.finding(f"{message}; outputs declared dynamic stay fixed because of it: {stays}",
                                nodes=[node], tensors=[node.inputs[1]], hint=FIXED_HINT)
        return self.finding(message, nodes=[node], tensors=[node.inputs[1]], hint=FIXED_HINT,
                            severity=Severity.WARNING)

    def _finding(self, ctx: RuleContext, sizes, baked) -> Finding:
        node, reshape, k = baked.node, baked.multiple.node, baked.chunk
        message = (f"Pad '{node.name}' pads {baked.length} by a constant {baked.value}, the round-up to a multiple of "
                   f"{k} at the export size only: Reshape '{reshape.name}' splits {baked.length} + {baked.value} into "
                   f"chunks of {k}, so onnxruntime fails wherever {baked.length} % {k} != {(k - baked.value) % k}")
        kwargs = dict(nodes=[node, reshape], tensors=[node.inputs[0], node.inputs[1]], hint=HINT)
        if not size_expr(None, sizes, baked.expr, node.inputs[0]):
            return self.finding(f"{message}; {baked.length} cannot be read from the sizes upstream", **kwargs)
        amounts = pad_amounts(ctx, baked)  # the hypotheses the chunking leaves, recomputed: the proposal must be one
        if not any(hypotheses.equivalent(h.expr, baked.expr) for h in amounts.alternatives()):
            return self.finding(f"{message}; the analysis proposes the amount {hypotheses.show(baked.expr)}, which "
                                f"the chunking does not leave (it leaves {amounts.describe()}): not repaired", **kwargs)
        if amounts.determined:
            safety, reason = Safety.SAFE, (f"determined: of the amounts equal to {baked.value} at export, only "
                                           f"{hypotheses.show(baked.expr)} makes {baked.length} + pad a multiple of "
                                           f"{k} at every length")
        else:
            safety, reason = Safety.UNSAFE, (
                f"several amounts fit: {amounts.describe()} (each makes every length a whole number of chunks of "
                f"{k}); applied the round-up to {k}, the Reshape's own chunk: wrong if the model rounds up to a "
                "larger multiple (more chunks at other lengths)")
            message += f"; the amount may be {amounts.describe()}"
        return self.finding(
            message, **kwargs,
            fix=Fix(f"compute the pad at the {_side(baked.position, len(sizes.shape(node.inputs[0])))} of Pad "
                    f"'{node.name}' as (k - {baked.length} % k) % k with k={k}",
                    apply=loosened(node, _at_export(export_sizes(ctx, ctx.evaluator).values, baked.length),
                                   rebuilt_entries(node, 1, {baked.position: baked.expr}, sizes, ctx.opset)),
                    safety=safety, reason=reason))

    def _whole_window_finding(self, sizes, node, whole: dict[int, tuple]) -> Finding:
        """Not repaired: the original runs at every size (padding a whole k), so only the module tells which model
        it is, and the proof compares with the original."""
        rank = len(sizes.shape(node.inputs[0]))
        amounts = "; ".join(f"the {_side(j, rank)} by {k} - {x} % {k}" for j, (k, x) in whole.items())
        return self.finding(
            f"Pad '{node.name}' pads {amounts}: a whole {', '.join(sorted({str(k) for k, _ in whole.values()}))} "
            "where the length is already a multiple, as an `if length % k != 0:` taken at export and frozen by the "
            "trace leaves it (PyTorch pads nothing there); a model that always pads leaves the same graph",
            nodes=[node], tensors=[node.inputs[1]], severity=Severity.WARNING, hint=WHOLE_HINT)

    def _same_finding(self, same: list[tuple], zeros: list) -> Finding:
        """One finding for the graph: an error where amounts vary with the size (torch.export kept one branch) or
        the graph also pads a window by zeros (a pad computed from the size where none was needed: what a model that
        writes its pads never does). Not repaired: the original runs at every size, so only the module tells which
        pads it computes."""
        told = [f"{f'Pad {node.name!r}' if node else 'its own pads'} pad {_told(axes)} before {window.op} "
                f"'{window.name}'" for node, window, axes in same]
        more = f", and {len(told) - 2} more" if len(told) > 3 else ""
        message = (f"{len(same)} padded strided window(s) pad as TF-style 'SAME' padding does at some lengths only: "
                   f"{'; '.join(told[:2] if more else told)}{more}")
        kwargs = dict(nodes=[n for node, window, _ in same for n in (node, window) if n],
                      tensors=[node.inputs[1] for node, _, _ in same if node and len(node.inputs) > 1],
                      hint=SAME_HINT)
        if any(axis.computed for _, _, axes in same for axis in axes):
            return self.finding(f"{message}. Amounts computed from the size that are 'SAME' at some lengths only: the "
                                "export kept one branch of a 'SAME' pad (`if n % s == 0:`), and other sizes run "
                                "wrong, silently", **kwargs)
        if zeros:
            return self.finding(
                f"{message}. The graph also pads {len(zeros)} window(s) by zeros ('{zeros[0].name}'): pads computed "
                "from the size in Python while tracing, the export size's, so other sizes run wrong, silently (if "
                "the model pads these amounts at every size, `--skip GF008` writes it)", **kwargs)
        return self.finding(f"{message}. Computed in Python while tracing, such amounts are the export size's, and "
                            "other sizes run wrong, silently; pads the model writes look the same",
                            severity=Severity.WARNING, **kwargs)


def _told(axes: list) -> str:
    """'height, width by (0, 1) (kernel 3, stride 2: 'SAME' at even lengths, (1, 1) at the others)'."""
    told: dict[tuple, list[str]] = {}
    for axis in axes:
        pads = "amounts computed from it" if axis.computed else str(axis.pads)
        residue, got, want = axis.wrong
        where = (f"at {_lengths((residue,), axis.stride)} they pad {got}, 'SAME' {want}" if axis.computed else
                 f"{want} at the others")
        told.setdefault((pads, axis.reach, axis.stride, axis.right, where), []).append(str(axis.length))
    return "; ".join(f"{', '.join(lengths)} by {pads} (kernel {reach}, stride {stride}: 'SAME' at "
                     f"{_lengths(right, stride)}, {where})"
                     for (pads, reach, stride, right, where), lengths in told.items())


def _lengths(residues: tuple[int, ...], stride: int) -> str:
    """'even lengths', 'lengths of 1 or 2 mod 3'."""
    if stride == 2:
        return "odd lengths" if residues == (1,) else "even lengths"
    return f"lengths of {' or '.join(map(str, residues))} mod {stride}"


def _whole_window_pads(sizes) -> Iterator[tuple]:
    """Pads with an amount `k - x % k` (k > 1): a whole k where x is a multiple of k. -> (node, {entry: (k, x)})."""
    for node in sizes.graph.nodes:
        if node.op != "Pad" or len(node.inputs) < 2:
            continue
        whole = {j: found for j, amount in enumerate(sizes.value(node.inputs[1]) or ())
                 if (found := _whole_window(amount)) is not None}
        if whole:
            yield node, whole


def _whole_window(amount) -> tuple | None:
    """(k, x) where `amount` is `k - Mod(x, k)` for a whole k > 1."""
    try:
        amount = as_expr(amount)  # strict: text is never parsed (a value is the analysis', names are the model's)
    except sympy.SympifyError:
        return None
    mods = [t for t in sympy.Add.make_args(amount) if isinstance(-t, sympy.Mod)]
    if len(mods) != 1:
        return None
    x, k = (-mods[0]).args
    return (int(k), x) if k.is_Integer and k > 1 and sympy.expand(amount - k + (-mods[0])) == 0 else None


def _side(position: int, rank: int) -> str:
    """Where entry `position` of ONNX's pads vector (starts of every axis, then ends) pads: 'end of axis 2'."""
    return f"{'start' if position < rank else 'end'} of axis {position % rank}"


def pad_amounts(ctx: RuleContext, baked) -> hypotheses.Determination:
    """The amounts that make `baked.length + amount` a multiple of the chunk at every length, among those equal to
    the constant at the export length; where that length is unknown, at each length it may have had (the union)."""
    length, k, value = baked.length, baked.chunk, baked.value
    symbol = length if length.is_Symbol else sympy.Symbol("length", integer=True, positive=True)
    known = export_sizes(ctx, ctx.evaluator).values
    at_export = length.subs({s: known[s.name] for s in length.free_symbols if s.name in known})
    lengths = [int(at_export)] if at_export.is_Integer else \
        [n for n in range(1, 4 * max(hypotheses.DIVISORS)) if (n + value) % k == 0]
    survivors: dict[str, dict] = {}
    for n in lengths:
        space = {hypotheses.hole(): hypotheses.size_hypotheses(value, {symbol: n}, families=hypotheses.PAD)}
        found = hypotheses.determine(space, [hypotheses.Multiple(symbol + hypotheses.hole(), k, "the chunk count")],
                                     {symbol: n})
        for fill in found.survivors:
            expr = fill[hypotheses.hole()].expr.xreplace({symbol: length})
            survivors.setdefault(hypotheses.show(expr), {hypotheses.hole(): hypotheses.Hypothesis(
                expr, fill[hypotheses.hole()].family, fill[hypotheses.hole()].cost)})
    return hypotheses.Determination(sorted(survivors.values(), key=lambda f: f[hypotheses.hole()].cost))


def _at_export(values: dict[str, int], length) -> set[int]:
    """The padded length at the export sizes `values` ({} where a size in it has none): the size the fix lets
    vary."""
    known = {symbol: values[symbol.name] for symbol in length.free_symbols if symbol.name in values}
    value = length.subs(known) if len(known) == len(length.free_symbols) else None
    return {int(value)} if value is not None and value.is_Integer else set()
