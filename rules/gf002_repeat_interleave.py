"""GF002 repeat-interleave."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.constants import Elem, Evaluator, Sym, show_elems
from graphfix.analysis.context import RuleContext
from graphfix.analysis.export_sizes import export_sizes
from graphfix.analysis.repeat import (
    chunk_index,
    chunk_source,
    counts_cut,
    one_count,
    producer,
    replace_repeat_interleave,
    split_covers,
    split_to_sequence,
    unit_split,
)
from graphfix.analysis.walk import ancestors
from graphfix.core.rule import FailureSite, Finding, Fix, Rejection, Rule, Safety, Severity, known


@dataclass
class Match:
    """One exported repeat_interleave: input, normalised dim and repeats, and the subgraph that computes it.

    `repeats` is an int or `Sym` (one count for every slice), an int64 array (constant per-element counts)
    or a tensor of the graph (per-element counts known at run time)."""

    form: str
    x: gs.Tensor
    dim: int
    repeats: Any
    output: gs.Tensor
    nodes: list[gs.Node] = field(default_factory=list)
    note: str = ""


class Candidate(Exception):
    """Raised by a matcher on a subgraph that looks like repeat_interleave but cannot be proven to be one."""


class RepeatInterleave(Rule):
    """repeat_interleave exported as Tile chains, unrolled Split/Concat or Sequence loops.

    ## What it does
    Finds every form torch.onnx emits for `torch.repeat_interleave` / `Tensor.repeat_interleave` and recovers
    the input, the dim and the repeats by data flow (not by node names):
    - **tile**: TorchScript exporter, integer repeats: `Unsqueeze → Tile → Reshape` whose target is built with
      `Shape/Slice/Concat` (or `Flatten` on 2-D inputs);
    - **tile-onehot**: repeats computed from a size (`q.size(1) // k.size(1)`): the Tile repeats come from a
      `Div → Cast → Concat → OneHot → Reshape` chain;
    - **unrolled**: a repeats *tensor* (`torch.tensor([1, 2, 3])`) unrolled into `Split → Unsqueeze → Expand →
      Reshape → Concat`, one branch per element (older exporters: `SplitToSequence/SequenceAt` pieces);
    - **loop**: `SplitToSequence → Loop{SequenceAt, Expand, SequenceInsert} → ConcatFromSequence` (torch 2.13
      for a repeats tensor on a dynamic axis, older torch also for integer repeats on one).
    The healthy forms (dynamo's `Unsqueeze → Expand → Reshape` and its `CumSum … Gather`) are not reported.

    ## Why it breaks deployment
    The unrolled form bakes `x.size(dim)` into the Split and, in torch 2.13, a wrong Reshape target
    (`[0, -1, 0]` after an Unsqueeze): onnxruntime fails with `Concat node ... Non concat axis dimensions must
    match` even at the export size, or returns wrong shapes. The Loop form fails so where its body has that Reshape
    or its counts are constants (an error; else it runs, a warning); TensorRT rejects Sequence ops (wenet #2517,
    #1630; onnxruntime #11672). Tile forms run, but spend 12 to 39 nodes of shape arithmetic on what `Unsqueeze →
    Expand → Reshape` does in three (pytorch #100438: 463 nodes for one call).

    ## Example
    ```python
    k = torch.repeat_interleave(k, self.h // self.h_kv, dim=-3)   # wenet MQA/GQA before PR #2519
    k = k.unsqueeze(-3).expand(-1, -1, self.h // self.h_kv, -1, -1).flatten(-4, -3)   # after (k is 4-D)
    x = torch.repeat_interleave(x, torch.tensor([1, 2, 3]), dim=1)  # breaks in ORT
    x = x.index_select(1, self.index)  # buffer: self.index = torch.repeat_interleave(torch.arange(3), reps)
    ```

    ## Fix safety
    One count (an int, a size expression, equal per-element counts) becomes `Unsqueeze → Expand → Reshape`;
    distinct constant counts a `Gather` of constant indices; run-time counts `CumSum → Range → LessOrEqual →
    ReduceSum → Gather`, as dynamo exports them. Safe when the input, the dim and every count were recovered
    exactly and nothing else reads the subgraph (anything unproven is rejected with the reason); unsafe for equal
    counts one per position of a dynamic axis: a table of counts cut to the length leaves those too.
    """

    code = "GF002"
    name = "repeat-interleave"
    severity = Severity.ERROR
    fixable = True
    runtime_order = 20
    runtime_hint = ("A repeat_interleave was unrolled with its repeat count baked at export time; export it as "
                    "unsqueeze → expand → reshape (or repeat + flatten).")
    knowledge = (
        known(r"Non concat axis dimensions must match",
              "onnxruntime Concat: inputs disagree outside the concat axis",
              "Typically repeat_interleave with a repeats tensor, which torch's TorchScript exporter unrolls into "
              "Split/Expand/Concat with baked sizes, or another baked size.",
              "Use `k.unsqueeze(2).expand(...).reshape(...)` for uniform repeats; `graphfix repair` rewrites the "
              "unrolled form.",
              reports="onnxruntime #11672, wenet #2517"),
        known(r"Can't constant fold SequenceEmpty node",
              "onnxruntime: sequence ops from an old repeat_interleave export",
              "Older torch exported repeat_interleave as Loop{SequenceInsert}+ConcatFromSequence (TensorRT: no).",
              "Re-export with a recent torch, or let `graphfix repair` replace it with Unsqueeze/Expand/Reshape.",
              reports="wenet #1630"),
        known(r"Exporting the operator '?(aten::)?repeat_interleave'? to ONNX opset version \d+ is not supported",
              "Export: repeat_interleave unsupported at this opset (old torch)",
              "The exporter had no symbolic for repeat_interleave at that opset.",
              "Upgrade torch, raise opset_version, or write `x.unsqueeze(d+1).expand(...).flatten(d, d+1)`."),
    )

    @classmethod
    def claims_failure(cls, site: FailureSite) -> bool:
        # a Concat whose pieces disagree, fed by the Split/Expand/Tile of an unrolled repeat_interleave
        return (site.node.op_type == "Concat" and "Non concat axis dimensions must match" in site.message
                and site.fed_by({"Split", "Expand", "Tile"}))

    def detect(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        vec = ctx.evaluator
        matchers = {"Tile": _match_tile, "Concat": _match_unrolled, "ConcatFromSequence": _match_loop}
        for node in list(ctx.graph.nodes):
            matcher = matchers.get(node.op)
            if matcher is None:
                continue  # only these ops end (or, for Tile, carry) an exported repeat_interleave
            try:
                match = matcher(ctx, vec, node)
            except Candidate as why:
                yield self.reject(str(why), nodes=[node])
                continue
            if match is None:
                continue  # not shaped like repeat_interleave at all
            yield self._finding(ctx, match)

    def _finding(self, ctx: RuleContext, m: Match) -> Finding:
        shape = ctx.shape(m.x) or []
        per_element = isinstance(m.repeats, np.ndarray | gs.Tensor)
        shown = _show_repeats(m.repeats)
        broken = m.form == "unrolled" or (m.form == "loop" and (bool(m.note) or isinstance(m.repeats, np.ndarray)))
        cause = (f"repeat_interleave({m.x.name}, {shown}, dim={m.dim}) exported in the {m.form} form "
                 f"({_subgraph_size(m)} nodes"
                 + ("; it bakes the element count and fails or returns wrong shapes in onnxruntime)" if broken
                    else "; Sequence ops, which TensorRT rejects)" if m.form == "loop"
                    else "; shape arithmetic where Unsqueeze → Expand → Reshape suffices)"))
        gather = per_element and one_count(m.repeats) is None
        replacement = "Gather with per-element indices" if gather else "Unsqueeze → Expand → Reshape"
        cut = counts_cut(m.repeats, shape, m.dim, lambda: export_sizes(ctx, ctx.evaluator).values.values())
        exact = f"input '{m.x.name}', dim {m.dim} and repeats {shown} recovered exactly from the data flow"
        hint = ("Index with a precomputed buffer: self.register_buffer('index', torch.repeat_interleave("
                "torch.arange(n), repeats)); x.index_select(dim, self.index) — or export with dynamo=True."
                if per_element else
                f"Write x.unsqueeze({m.dim + 1}).expand(..., r, ...).flatten({m.dim}, {m.dim + 1}) "
                "(wenet PR #2519), or export with dynamo=True.")
        return self.finding(
            cause, nodes=m.nodes, tensors=[m.x, m.output],
            shapes={m.x.name: shape, m.output.name: ctx.shape(m.output)},
            severity=Severity.ERROR if broken else Severity.WARNING,
            hint=hint,
            fix=Fix(f"replace the {m.form} repeat_interleave of '{m.x.name}' with {replacement}",
                    apply=replace_repeat_interleave(m.x, m.dim, m.repeats, m.output, shape, ctx.opset),
                    safety=Safety.UNSAFE if cut else Safety.SAFE,
                    reason=(cut or exact) + m.note),
        )


# ------------------------------------------------------------------------------------------------ matchers

def _match_tile(ctx: RuleContext, vec: Evaluator, tile: gs.Node) -> Match | None:
    unsq = producer(tile.inputs[0])
    readers = [n for n in tile.outputs[0].outputs if n.op != "Shape"]
    if unsq is None or unsq.op != "Unsqueeze" or len(readers) != 1:
        return None  # repeat_interleave tiles an unsqueezed input and only merges the result (and reads its shape)
    merge = readers[0]
    if merge.op not in ("Reshape", "Flatten") or tile.outputs[0].name in ctx.graph_output_names:
        return None
    x = unsq.inputs[0]
    shape = ctx.shape(x)
    axis = _single_axis(ctx, unsq)
    if shape is None or axis is None:
        raise Candidate("Unsqueeze → Tile → Reshape: rank of the input or the unsqueeze axis unknown")
    rank = len(shape)
    dim = (axis + rank + 1 if axis < 0 else axis) - 1
    if dim < 0:
        return None  # a new leading axis: torch.repeat / tile, not repeat_interleave
    reps = vec.elems(tile.inputs[1])
    if reps is None or len(reps) != rank + 1:
        raise Candidate("Tile repeats cannot be read as a vector of known length")
    if any(r != 1 for j, r in enumerate(reps) if j != dim + 1):
        raise Candidate(f"Tile repeats {show_elems(reps)} repeat other axes too: a repeat, not repeat_interleave")
    if not _merges(ctx, vec, merge, tile.outputs[0], x, shape, dim, reps[dim + 1]):
        raise Candidate(f"the {merge.op} after Tile does not merge axes {dim} and {dim + 1} back")
    onehot = any(producer(t) is not None and producer(t).op == "OneHot" for t in ancestors(tile.inputs[1], 3))
    form = "tile-onehot" if onehot else "tile"
    return Match(form, x, dim, reps[dim + 1], merge.outputs[0], [unsq, tile, merge])


def _match_unrolled(ctx: RuleContext, vec: Evaluator, concat: gs.Node) -> Match | None:
    branches = [_branch(ctx, t) for t in concat.inputs]
    if not branches or any(b is None for b in branches):
        return None  # every input must be Reshape(Expand(Unsqueeze(chunk)))
    firsts = {id(b[0].inputs[0]) for b in branches}
    source = chunk_source(branches[0][0].inputs[0])
    if source is None or len(firsts) != len(branches):
        return None
    x, axis, kind = source
    shape = ctx.shape(x)
    if shape is None:
        raise Candidate("rank of the repeated input is unknown")
    dim = axis % len(shape)
    if concat.attrs.get("axis", 0) % len(shape) != dim:
        raise Candidate("Concat axis differs from the Split axis")
    chunks = [chunk_index(ctx, b[0].inputs[0]) for b in branches]
    if chunks != list(range(len(chunks))) or not split_covers(ctx, vec, branches[0][0].inputs[0], len(chunks)):
        raise Candidate("the branches do not take the input's slices once each, in order")
    reps = [_branch_repeat(ctx, vec, b, x, shape, dim) for b in branches]
    repeats = _collect_repeats(ctx, vec, reps)
    nodes = [n for b in branches for n in b] + [concat]
    form = "unrolled-sequence" if kind == "sequence" else "unrolled"
    return Match(form, x, dim, repeats, concat.outputs[0], nodes, _reshape_note(ctx, vec, branches, x, shape, dim))


def _match_loop(ctx: RuleContext, vec: Evaluator, cfs: gs.Node) -> Match | None:
    loop = producer(cfs.inputs[0])
    if loop is None or loop.op != "Loop" or cfs.attrs.get("new_axis", 0):
        return None
    slot = loop.outputs.index(cfs.inputs[0])
    body: gs.Graph = loop.attrs["body"]
    if producer(loop.inputs[2 + slot]) is None or producer(loop.inputs[2 + slot]).op != "SequenceEmpty":
        return None  # the sequence must start empty
    insert = producer(body.outputs[1 + slot])
    if insert is None or insert.op != "SequenceInsert" or insert.inputs[0] is not body.inputs[2 + slot]:
        raise Candidate("Loop body does not append to the carried sequence")
    branch = _branch(ctx, insert.inputs[1])
    if branch is None:
        raise Candidate("Loop body does not append Reshape(Expand(Unsqueeze(slice)))")
    at = producer(branch[0].inputs[0])
    if at is None or at.op != "SequenceAt" or at.inputs[1] is not body.inputs[0]:
        raise Candidate("Loop body does not take slice i of the input in iteration i")
    x, axis, _ = split_to_sequence(at.inputs[0]) or (None, 0, "")
    shape = None if x is None else ctx.shape(x)
    if shape is None:
        raise Candidate("the sliced input is not a SplitToSequence of unit pieces, or its rank is unknown")
    dim = axis % len(shape)
    if cfs.attrs.get("axis", 0) % len(shape) != dim or not _true(vec, loop.inputs[1]):
        raise Candidate("ConcatFromSequence axis differs from the split axis, or the loop condition is not 'true'")
    trips = vec.elems(loop.inputs[0])
    if trips is None or len(trips) != 1 or trips[0] not in (Sym("dim", x, dim), shape[dim]):
        raise Candidate(f"the trip count is not {x.name}.size({dim})")
    if not unit_split(vec, producer(at.inputs[0])):
        raise Candidate("the input is not split into pieces of size 1")
    repeat = _branch_repeat(ctx, vec, branch, x, shape, dim, iteration=body.inputs[0])
    if isinstance(repeat, tuple):
        repeat = _resolve(ctx, vec, repeat[1])
    return Match("loop", x, dim, repeat, cfs.outputs[0], [loop, cfs, producer(at.inputs[0])],
                 _reshape_note(ctx, vec, [branch], x, shape, dim))


# ------------------------------------------------------------------------------------------------ helpers

def _branch(ctx: RuleContext, tensor: gs.Tensor) -> list[gs.Node] | None:
    """[Unsqueeze, Expand, Reshape] when `tensor` is Reshape(Expand(Unsqueeze(.))) read by nothing else."""
    reshape = producer(tensor)
    expand = reshape and reshape.op == "Reshape" and producer(reshape.inputs[0])
    unsq = expand and expand.op == "Expand" and producer(expand.inputs[0])
    if not unsq or unsq.op != "Unsqueeze":
        return None
    if len(unsq.outputs[0].outputs) != 1 or len(expand.outputs[0].outputs) != 1:
        return None
    return [unsq, expand, reshape]


def _branch_repeat(ctx, vec, branch, x, shape, dim, iteration=None) -> Elem | tuple:
    """The repeat count of one branch: an int, or ("chunk", source tensor, index) / ("at", seq source)."""
    unsq, expand, _ = branch
    if _single_axis(ctx, unsq) not in (dim + 1, dim - len(shape)):
        raise Candidate(f"a branch unsqueezes another axis than {dim + 1}")
    target = vec.elems(expand.inputs[1])
    if target is None or len(target) != len(shape) + 1:
        raise Candidate("an Expand shape cannot be read as a vector of known length")
    keep = [shape[j] for j in range(dim)] + [1, None] + [shape[j] for j in range(dim + 1, len(shape))]
    for j, (want, got) in enumerate(zip(keep, target, strict=True)):
        if j != dim + 1 and got != 1 and not (isinstance(want, int) and got == want):
            raise Candidate(f"Expand shape {show_elems(target)} changes axis {j}, not only the repeat axis")
    count = target[dim + 1]
    if isinstance(count, int):
        return count
    piece = producer(count.tensor) if count.kind == "val" and count.index == 0 else None
    if piece is not None and piece.op == "SequenceAt" and iteration is not None and piece.inputs[1] is iteration:
        source = split_to_sequence(piece.inputs[0])
        if source is not None and source[1] == 0 and unit_split(vec, producer(piece.inputs[0])):
            return ("at", source[0], piece.inputs[1])
    source = chunk_source(count.tensor)
    if source is None or source[1] != 0 or (source[2] == "sequence" and not unit_split(
            vec, producer(producer(count.tensor).inputs[0]))):
        raise Candidate("a repeat count comes from neither a constant nor a unit split of a repeats tensor")
    return ("chunk", source[0], chunk_index(ctx, count.tensor), count.tensor)


def _reshape_note(ctx, vec, branches, x, shape, dim) -> str:
    """Why the exporter's own Reshape differs from repeat_interleave, when it does (torch 2.13's `[0, -1, 0]`)."""
    for _, expand, reshape in branches:
        if not _merges(ctx, vec, reshape, expand.outputs[0], x, shape, dim, None):
            target = vec.elems(reshape.inputs[1])
            return (f"; the exporter's Reshape target {show_elems(target) if target else '?'} copies the wrong dims "
                    "(the torch bug behind 'Non concat axis dimensions must match'): the replacement computes what "
                    "the PyTorch code does, where the original failed or returned wrong shapes")
    return ""


def _collect_repeats(ctx: RuleContext, vec: Evaluator, reps: list) -> Any:
    """One int, an array of constant counts, or the repeats tensor the branches took their counts from."""
    if all(isinstance(r, int) for r in reps):
        return reps[0] if len(set(reps)) == 1 else np.asarray(reps, dtype=np.int64)
    sources = {id(r[1]) for r in reps if isinstance(r, tuple)}
    if len(sources) != 1 or any(not isinstance(r, tuple) or r[2] != k for k, r in enumerate(reps)):
        raise Candidate("repeat counts mix constants and tensors, or come out of order")
    if not split_covers(ctx, vec, reps[0][3], len(reps)):
        raise Candidate("the repeats tensor is not split into exactly one count per slice")
    return _resolve(ctx, vec, reps[0][1])


def _resolve(ctx: RuleContext, vec: Evaluator, repeats: gs.Tensor) -> Any:
    """Constant counts as an array, Expand(c) as the int c, anything else stays a run-time tensor."""
    values = vec.elems(repeats)
    if values is not None and all(isinstance(v, int) for v in values):
        return np.asarray(values, dtype=np.int64)
    maker = producer(repeats)
    if maker is not None and maker.op == "Expand":
        fill = ctx.constant_value(maker.inputs[0])
        if fill is not None and fill.size == 1 and np.issubdtype(fill.dtype, np.integer):
            return int(fill.reshape(-1)[0])
    return repeats


def _merges(ctx, vec, merge: gs.Node, tiled: gs.Tensor, x: gs.Tensor, shape: list, dim: int, repeat) -> bool:
    """Whether `merge` (Reshape or Flatten of the tiled tensor) merges axes dim, dim+1 and keeps the rest."""
    rank = len(shape)
    if merge.op == "Flatten":
        return rank == 2 and dim == 2 - merge.attrs.get("axis", 1)
    target = vec.elems(merge.inputs[1])
    if target is None or len(target) != rank:
        return False
    merged = shape[dim] * repeat if isinstance(shape[dim], int) and isinstance(repeat, int) else None
    zero_ok = merge.attrs.get("allowzero", 0) == 0
    for j, got in enumerate(target):
        src = j if j < dim else j + 1
        same = (Sym("dim", tiled, src), Sym("dim", x, j))
        if j == dim:
            ok = got == -1 or (merged is not None and got == merged)
        else:
            static = isinstance(shape[j], int) and got == shape[j]
            ok = got in same or static or (zero_ok and got == 0 and j < dim)
        if not ok:
            return False
    return True


def _single_axis(ctx: RuleContext, unsq: gs.Node) -> int | None:
    axes = unsq.attrs.get("axes")
    if axes is None and len(unsq.inputs) > 1:
        value = ctx.constant_value(unsq.inputs[1])
        axes = None if value is None else value.reshape(-1).tolist()
    return axes[0] if axes is not None and len(axes) == 1 else None


def _true(vec: Evaluator, cond: gs.Tensor) -> bool:
    if not cond.name and not isinstance(cond, gs.Constant):
        return True
    got = vec.elems(cond)
    return got is not None and len(got) == 1 and got[0] in (1, True)


def _subgraph_size(m: Match, limit: int = 500) -> int:
    """Non-Constant nodes between the input and the output (stopping at Shape reads and graph inputs)."""
    seen: set[int] = set()
    stack, count = [m.output], 0
    while stack and count < limit:
        tensor = stack.pop()
        node = producer(tensor)
        if tensor is m.x or node is None or id(node) in seen:
            continue
        seen.add(id(node))
        count += node.op != "Constant"
        if node.op != "Shape":
            stack.extend(node.inputs)
    return count


def _show_repeats(repeats: Any) -> str:
    if isinstance(repeats, np.ndarray):
        return f"tensor({repeats.tolist()})"
    if isinstance(repeats, gs.Tensor):
        return f"tensor '{repeats.name}'"
    if isinstance(repeats, Sym):
        name = repeats.tensor.name
        return f"{name}.size({repeats.index})" if repeats.kind == "dim" else f"'{name}'"
    return str(repeats)
