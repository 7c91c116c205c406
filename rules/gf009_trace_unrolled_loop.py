"""GF009 trace-unrolled-loop."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.context import RuleContext
from graphfix.analysis.export_sizes import export_sizes
from graphfix.analysis.sizes import sizes_if
from graphfix.analysis.sizes.domain import input_minimums
from graphfix.core.rule import FailureSite, Finding, Rejection, Rule, Severity

MIN_STEPS = 4  # fewer single-step reads of one axis are as likely a model's own choice (x[:, 0] + x[:, 1])

REWRITE = ("Use torch.nn.GRU/LSTM (one ONNX node, any length), or script the loop (`torch.jit.script`) so that it "
           "exports as an ONNX Loop.")
HINT = ("A Python loop over a dynamic axis (`for t in range(x.shape[1]): h = cell(x[:, t], h)`) is unrolled by "
        "tracing (both exporters) for the export length. " + REWRITE)


class TraceUnrolledLoop(Rule):
    """Loops over a dynamic axis that tracing unrolled for the export length.

    ## What it does
    Finds Gather nodes that read the steps 0, 1, ..., N-1 (N >= 4, or -1 ... -N from the end) of one axis of one
    tensor, each with a constant scalar index, or Slices of one step each (`x[:, t:t + 1]`), where the size
    analysis says the axis grows with the input sizes (not a number, not capped at N as `x[:, :4]` is): a Python
    loop over that axis, recorded step by step by the tracer, if the axis was N long at export. That is an error
    where the export's sizes are known (`--trace-shape`, or solved from the graph) and the axis was N long then.
    Where it was longer, or is longer than N at every size (`T + 4` for 4 tokens put before the input), N single
    steps are a model's own choice (task tokens or the last lags read one by one) and no finding ("at every size"
    is at every size the model's Conv and Pool layers take). Where nothing tells the export's length, it is an
    error when each step's state goes into the next, transformed (a recurrent cell, as speechbrain's LiGRU in its
    CRDNN, a gated scan, a decay), and a warning when the steps are read apart (stacked, or summed up). A model
    that carries a state over N steps of a longer input by design is told apart with `--trace-shape`. A single
    read at the position that was the last at export (`h[:, int(T) - 1]` traced at 11 frames reads position 10)
    is a warning where the export's length is known, and where nothing tells it, at a position from 3 on: the
    graph is a model's own `h[:, 10]`'s too, which the probe does not take below 11 frames.

    ## Why it breaks deployment
    Custom recurrent cells (speechbrain's LiGRU in its CRDNN, hand-written GRU/attention decoders, RNN-T joint
    loops) iterate `for t in range(x.shape[1])`. The TorchScript exporter runs the loop once, at the export
    length N, and writes N copies of its body. The graph then computes N steps at every length: shorter inputs fail
    in onnxruntime (`indices element out of data bounds, idx=17 must be within the inclusive range [-17,16]`), and
    longer ones silently return N frames, whatever the output's declared dims say.

    ## Example
    ```python
    for t in range(x.shape[1]):      # traced at T=20: Gather(x, 0, axis=1) ... Gather(x, 19, axis=1)
        h = cell(x[:, t], h)
    ```

    ## Fix safety
    Not fixable in the graph: the loop's body is copied N times, each copy with its own step, and rebuilding an
    ONNX Loop from the copies is not attempted. The finding names the steps and the axis; re-export as the hint
    says. Loops that read their steps otherwise (a step of 2, indices computed from the shape, a one-element
    index vector) are not found; a loop that carries no state (a head applied to each frame, the frames stacked)
    or only adds to it (`acc = acc + x[:, t]`) is only a warning without the export's sizes, as N frames read by
    design would be.
    """

    code = "GF009"
    name = "trace-unrolled-loop"
    severity = Severity.ERROR
    fixable = False
    runtime_messages = (r"indices element out of data bounds",)
    runtime_order = 60
    runtime_hint = ("A Gather read a position past the end of its axis at a constant index: a Python loop over a "
                    "dynamic axis, the batch's (`for i in range(x.shape[0])`, speechbrain's StatisticsPooling with "
                    "lengths: helper 114) or the length's, unrolled by tracing, reads the export size's positions at "
                    "every size, fails below it and drops the rest above. " + REWRITE + " If the "
                    "position is the model's own (`x[:, 5]`), the input is below what the model takes, in PyTorch "
                    "too.")

    @classmethod
    def claims_failure(cls, site: FailureSite) -> bool:
        """A Gather out of bounds at a constant index (a step of an unrolled loop, or a model's own position)."""
        if site.node.op_type != "Gather" or not any(re.search(p, site.message) for p in cls.runtime_messages):
            return False
        constants = {t.name for t in site.model.graph.initializer}
        constants |= {o for n in site.model.graph.node if n.op_type == "Constant" for o in n.output}
        return len(site.node.input) > 1 and site.node.input[1] in constants

    def detect(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        yield from self._last_reads(ctx)
        loops = unrolled_reads(ctx)
        sizes = sizes_if(ctx, "Gather") if loops else None
        known = export_sizes(ctx, ctx.evaluator).values if loops else {}
        least = input_minimums(ctx.model, frames=1) if loops else {}  # below: a Conv or Pool has no input
        for data, axis, nodes in loops:
            steps = len({index for index, _ in nodes})
            shape = sizes.shape(data) if sizes else None
            length = shape[axis] if shape is not None and axis < len(shape) else None
            where, names = f"axis {axis} of '{data.name}'", [n for _, n in nodes]
            if length is None:
                yield self.reject(f"Gathers read the {steps} steps of {where} one at a time, but the size analysis "
                                  "cannot read that axis' length" + (f" ({sizes.incomplete})" if sizes and
                                                                     sizes.incomplete else ""), nodes=names)
                continue
            if not _varies(length):
                yield self.reject(f"Gathers read the {steps} steps of {where} one at a time, but its length "
                                  f"{length} does not grow with the sizes: a loop over a fixed window", nodes=names)
                continue
            at_export = _at(length, known)
            if at_export is not None and at_export != steps:
                yield self.reject(f"Gathers read {steps} single steps of {where}, whose length {length} was "
                                  f"{at_export} at export: not every step, so no loop over it", nodes=names)
                continue
            shortest = _at(length, {str(symbol): least.get(str(symbol), 1) for symbol in length.free_symbols})
            if shortest is not None and shortest > steps:
                yield self.reject(f"Gathers read {steps} single steps of {where}, whose length {length} is "
                                  f"{shortest} or more at every size the model takes: not every step, so no loop "
                                  "over it", nodes=names)
                continue
            first, last = min(i for i, _ in nodes), max(i for i, _ in nodes)
            message = (f"{len(nodes)} nodes read steps {first} to {last} of {where} one at a time: a Python "
                       f"loop over that axis, unrolled for {steps} steps at export")
            looped = at_export is None and _carried(ctx.graph, nodes)
            if at_export == steps or looped:
                known_how = (f"The axis is {length} at run time" if at_export == steps else
                             "Each step's state goes into the next, transformed (a recurrent cell or scan, "
                             f"not {steps} steps read apart)")
                unless = "" if at_export == steps else (
                    f". If the model reads {steps} steps of a longer input by design, give the export shape with "
                    "--trace-shape: an export longer than that clears this")
                yield self.finding(
                    f"{message}. {known_how}, so the model computes {steps} steps at every length: onnxruntime "
                    f"fails where {length} < {steps}, and where {length} > {steps} the steps after the first "
                    f"{steps} are ignored{unless}", nodes=names, tensors=[data], hint=HINT)
            else:
                yield self.finding(
                    f"{message}, if the model was exported where {length} = {steps} (the graph does not say: the "
                    f"export's sizes are not known, and {steps} single steps of a longer input are a model's own "
                    f"choice). Then the model computes {steps} steps at every length; give the export shape with "
                    "--trace-shape, or compare with PyTorch at another length", nodes=names, tensors=[data],
                    hint=HINT,
                    severity=Severity.WARNING)


    def _last_reads(self, ctx: RuleContext) -> Iterator[Finding]:
        """A single read at a fixed position, `h[:, int(T) - 1]` traced at 11 frames: Gather at 10, the same graph
        as a model's own `h[:, 10]`, which runs at every length from 11 (probed only there: the probe's domain).
        Of a position from 3 on (the first few are a model's own tokens), where --trace-shape or the graph tells
        the export's length only if it was the last position then. A warning."""
        sizes, reads = None, defaultdict(list)  # (tensor, axis) -> its reads: one alone, not a loop's
        for node in ctx.graph.nodes:
            read = _gathered(ctx, node) if node.op == "Gather" else None
            shape = ctx.shape(node.inputs[0]) if read is not None else None
            if shape and -len(shape) <= read[0] < len(shape) and isinstance(shape[read[0]], str):
                reads[node.inputs[0].name, read[0] % len(shape)].append((node, read[1], shape[read[0]]))
        for (_, axis), ((node, index, dim),) in ((key, found) for key, found in reads.items() if len(found) == 1):
            sizes = sizes or export_sizes(ctx, ctx.evaluator)
            if index < 3 or dim not in sizes.carriers:  # the first tokens (a class token's 0) are a model's own
                continue
            known = dim in sizes.values and sizes.from_the_graph(dim)
            if known and sizes.values[dim] != index + 1:
                continue
            where = f"the last at export ({sizes.explain(dim)})" if known else \
                f"the last if {dim} was {index + 1} at export (nothing says; `--trace-shape` tells)"
            yield self.finding(
                f"Gather '{node.name}' reads position {index} of axis {axis} of '{node.inputs[0].name}', {where}: "
                f"if the index was `int({dim}) - 1`, it reads position {index} at every length, and fails below "
                f"{index + 1}", nodes=[node.name], tensors=[node.inputs[0]], severity=Severity.WARNING,
                hint="The last position as a Python int is baked: index from the end (`h[:, -1]`) or with the "
                     "traced size (`h[:, h.shape[1] - 1]`). If the position is the model's own, leave it.")


def _varies(length) -> bool:
    """Whether an axis' length (an expression of the input sizes) grows with them: not a number, not capped
    (`Min(4, T)`), not a ratio that stays put (`T / floor(T / 4)`)."""
    symbols = sorted(length.free_symbols, key=str)
    if not symbols:
        return False
    values = [length.subs({s: n for s in symbols}) for n in (1000, 2000)]
    return all(v.is_number for v in values) and values[0] != values[1]


def _at(length, known: dict[str, int]):
    """The axis' length at the export size, where every size it depends on is known there; else None."""
    symbols = length.free_symbols
    if not symbols or any(str(s) not in known for s in symbols):
        return None
    value = length.subs({s: known[str(s)] for s in symbols})
    return int(value) if value.is_Integer else None


def unrolled_reads(ctx: RuleContext) -> list[tuple[gs.Tensor, int, list[tuple[int, gs.Node]]]]:
    """(tensor, axis, the (step, node) reads of single steps of that axis), where the steps are exactly
    0 .. N-1, or -1 .. -N (a loop from the end), with N >= MIN_STEPS; the reads of each direction are judged
    apart (a bidirectional loop reads every step both ways; a model may add a read of the last step). A read is a
    Gather of a constant scalar index (`x[:, t]`) or a Slice of one step from a constant start (`x[:, t:t + 1]`,
    `x.narrow(1, t, 1)`). An axis whose length shape inference knows as a number is left out (no loop over a
    dynamic axis; the size analysis is not asked)."""
    reads: dict[tuple[str, int], list[tuple[int, gs.Node]]] = defaultdict(list)  # tensors are unhashable
    for node in ctx.graph.nodes:
        read = _gathered(ctx, node) if node.op == "Gather" else _sliced(ctx, node) if node.op == "Slice" else None
        if read is None:
            continue
        axis, step = read
        data = node.inputs[0]
        rank = len(data.shape) if data.shape is not None else None
        if (axis < 0 and rank is None) or rank == 0:
            continue
        axis = axis % rank if axis < 0 else axis
        if rank is not None and axis < rank and isinstance(data.shape[axis], int) and data.shape[axis] >= 0:
            continue  # shape inference knows the length as a number (a shape vector's entries, heads)
        reads[(data.name, axis)].append((step, node))
    loops = []
    for (_, axis), nodes in reads.items():
        for part in ([r for r in nodes if r[0] >= 0], [r for r in nodes if r[0] < 0]):  # forward, from the end
            if _every_step({index for index, _ in part}):
                loops.append((part[0][1].inputs[0], axis, part))
    return loops


def _gathered(ctx: RuleContext, node: gs.Node) -> tuple[int, int] | None:
    """(axis, step) of a Gather of one constant scalar index."""
    if len(node.inputs) != 2:
        return None
    index = ctx.constant_value(node.inputs[1])
    if index is None or np.ndim(index) != 0 or not np.issubdtype(np.asarray(index).dtype, np.integer):
        return None
    return int(node.attrs.get("axis", 0)), int(index)


def _sliced(ctx: RuleContext, node: gs.Node) -> tuple[int, int] | None:
    """(axis, step) of a Slice of one step, [t, t + 1) with t >= 0, along one axis (opset 10 and later)."""
    if not 3 <= len(node.inputs) <= 5:
        return None
    given = [ctx.constant_value(t) if t.name else None for t in node.inputs[1:]]
    absent = [t.name == "" for t in node.inputs[1:]]  # an optional input left out: its default
    starts, ends = given[0], given[1]
    axes = given[2] if len(given) > 2 and not absent[2] else np.array([0])
    steps = given[3] if len(given) > 3 and not absent[3] else np.array([1])
    if any(v is None or np.size(v) != 1 or not np.issubdtype(np.asarray(v).dtype, np.integer)
           for v in (starts, ends, axes, steps)):
        return None
    start, end = int(np.ravel(starts)[0]), int(np.ravel(ends)[0])
    if int(np.ravel(steps)[0]) != 1 or start < 0 or end != start + 1:
        return None
    return int(np.ravel(axes)[0]), start


PASSIVE = frozenset({"Add", "Sub", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Transpose", "Cast",
                     "Concat", "Expand"})  # ops that add a state up, stack or move it: none transforms it


def _carried(graph: gs.Graph, reads: list[tuple[int, gs.Node]]) -> bool:
    """Whether each step's state goes into the next, transformed: a recurrent cell (`h = tanh(W x_t + U h)`), a
    gated scan (`h = a_t * h + b_t`), a decay (`h = alpha * h + x_t`), not N steps read apart (stacked, or summed
    up by Python's `sum`, whose running total is only ever added to). Each tensor gets the set of steps it depends
    on (a bit per step, in loop order); the state after step k depends on exactly the steps 0..k, and for every
    step but the first and the last, some node other than an addition, a stack or a move reads it."""
    order = sorted(reads, key=lambda read: read[0] if read[0] >= 0 else -1 - read[0])
    seeds = {node.outputs[0].name: 1 << position for position, (_, node) in enumerate(order)}
    depends: dict[str, int] = {}
    transformed: set[int] = set()
    for node in _in_order(graph):
        given = [depends.get(t.name, 0) for t in _reads(node) if t.name]  # '' is an omitted input: none
        steps = seeds.get(node.outputs[0].name, 0) if node.outputs else 0
        for bits in given:
            steps |= bits
        if not steps:
            continue
        if node.op not in PASSIVE:
            transformed.update(bits.bit_length() - 1 for bits in given if bits and not bits & (bits + 1))
        depends.update((t.name, steps) for t in node.outputs if t.name)
    return transformed >= set(range(1, len(order) - 1))


def _in_order(graph: gs.Graph) -> list[gs.Node]:
    """The nodes, each after the producers of its inputs (ONNX requires that order, onnxruntime does not)."""
    producers = {t.name: node for node in graph.nodes for t in node.outputs if t.name}
    started: set[int] = set()
    done: set[int] = set()
    ordered: list[gs.Node] = []
    for start in graph.nodes:
        stack = [(start, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                done.add(id(node))
                ordered.append(node)
                continue
            if id(node) in started:  # done, or on the way (a cycle, which loading refuses, ends here)
                continue
            started.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for t in _reads(node) if (p := producers.get(t.name)) and id(p) not in done)
    return ordered


def _reads(node: gs.Node) -> list[gs.Tensor]:
    """The node's inputs and the outer tensors its subgraphs read (a scripted cell inside an If's branch)."""
    reads = list(node.inputs)
    for graph in node.subgraphs():
        inner = {t.name for n in graph.nodes for t in n.outputs} | {t.name for t in graph.inputs}
        reads += [t for n in graph.nodes for t in _reads(n) if t.name not in inner]
    return reads


def _every_step(steps: set[int]) -> bool:
    count = len(steps)
    return count >= MIN_STEPS and steps in (set(range(count)), set(range(-count, 0)))
