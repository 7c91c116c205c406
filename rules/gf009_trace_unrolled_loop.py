"""GF009 trace-unrolled-loop."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.context import RuleContext
from graphfix.analysis.sizes import sizes_if
from graphfix.core.rule import Finding, Rejection, Rule, Severity

MIN_STEPS = 4  # fewer single-step reads of one axis are as likely a model's own choice (x[:, 0] + x[:, 1])

HINT = ("A Python loop over a dynamic axis (`for t in range(x.shape[1]): h = cell(x[:, t], h)`) is unrolled by the "
        "TorchScript exporter for the export length. Use torch.nn.GRU/LSTM (one ONNX node, any length), or script "
        "the loop (`torch.jit.script`) so that it exports as an ONNX Loop.")


class TraceUnrolledLoop(Rule):
    """Loops over a dynamic axis that tracing unrolled for the export length.

    ## What it does
    Finds Gather nodes that read the steps 0, 1, ..., N-1 (N >= 4) of one axis of one tensor, each with a constant
    scalar index, where the size analysis says the axis is dynamic (an expression of the inputs' sizes, not a
    number): a Python loop over that axis, recorded step by step by the tracer.

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
    says. A loop over an axis whose length is a number (heads, a fixed window, a shape vector's entries) is no
    finding, and one whose length the size analysis cannot read is reported as a rejection.
    """

    code = "GF009"
    name = "trace-unrolled-loop"
    severity = Severity.ERROR
    fixable = False

    def detect(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        loops = unrolled_reads(ctx)
        sizes = sizes_if(ctx, "Gather") if loops else None
        for data, axis, nodes in loops:
            dims = sizes.dims(data) if sizes else None
            length = dims[axis] if dims is not None and -len(dims) <= axis < len(dims) else None
            steps = len({index for index, _ in nodes})
            where = f"axis {axis} of '{data.name}'"
            if isinstance(length, int):
                yield self.reject(f"Gathers read the {steps} steps of {where} one at a time, but its length is the "
                                  f"number {length}: a loop over a fixed axis", nodes=[n for _, n in nodes])
                continue
            if length is None:
                yield self.reject(f"Gathers read the {steps} steps of {where} one at a time, but the size analysis "
                                  "cannot read that axis' length" + (f" ({sizes.incomplete})" if sizes and
                                                                     sizes.incomplete else ""),
                                  nodes=[n for _, n in nodes])
                continue
            yield self.finding(
                f"{len(nodes)} Gather nodes read steps 0 to {steps - 1} of {where} one at a time: a Python loop "
                f"over that axis, unrolled for {steps} steps at export. The axis is {length} at run time, so the "
                f"model computes {steps} steps at every length: onnxruntime fails where {length} < {steps}, and "
                f"where {length} > {steps} the steps after the first {steps} are ignored",
                nodes=[node for _, node in nodes], tensors=[data], hint=HINT)


def unrolled_reads(ctx: RuleContext) -> list[tuple[gs.Tensor, int, list[tuple[int, gs.Node]]]]:
    """(tensor, axis, the (step, Gather) reads of single steps of that axis), where the steps are exactly
    0 .. N-1 with N >= MIN_STEPS (each may be read more than once: a bidirectional loop reads every step twice),
    and the axis is not of a length that shape inference knows as a number (then it is no loop over a dynamic
    axis, and the size analysis is not asked)."""
    reads: dict[tuple[str, int], list[tuple[int, gs.Node]]] = defaultdict(list)  # tensors are unhashable
    for node in ctx.graph.nodes:
        if node.op != "Gather" or len(node.inputs) != 2:
            continue
        index = ctx.constant_value(node.inputs[1])
        if index is None or np.ndim(index) != 0 or not np.issubdtype(np.asarray(index).dtype, np.integer):
            continue
        data = node.inputs[0]
        axis = int(node.attrs.get("axis", 0))
        rank = len(data.shape) if data.shape is not None else None
        if axis < 0 and rank is None:
            continue
        axis = axis % rank if axis < 0 else axis
        if rank is not None and axis < rank and isinstance(data.shape[axis], int) and data.shape[axis] >= 0:
            continue  # shape inference knows the length as a number (a shape vector's entries, heads)
        reads[(data.name, axis)].append((int(index), node))
    return [(nodes[0][1].inputs[0], axis, nodes) for (_, axis), nodes in reads.items()
            if _every_step({index for index, _ in nodes})]


def _every_step(steps: set[int]) -> bool:
    return len(steps) >= MIN_STEPS and steps == set(range(len(steps)))
