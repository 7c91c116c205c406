"""Which upstream dim a tensor's dim is: followed back through ops that keep it (elementwise ones, broadcasts whose
other operands have 1 there) and ops that only move it (Transpose, Unsqueeze, Squeeze, a Gather on another axis).

A baked Reshape `h.view(int(B), int(T), 2, 4).transpose(1, 2) * m[:, None, :, None]` is held by the Mul on axes
0 and 2 of the Transpose's output: entries 0 and 1 of the Reshape's shape. Where the dim is made by the op
itself (an Unsqueeze's new axis, a Gather's index dims) or a shape is unknown, the walk stops there.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from graphfix.analysis.sizes.arith import as_expr
from graphfix.analysis.sizes.core import Sizes
from graphfix.analysis.sizes.ops import BROADCAST, SAME_SHAPE

MOVES = {"Transpose", "Unsqueeze", "Squeeze", "Gather"}


def passed_along(sizes: Sizes, tensor: gs.Tensor, axis: int) -> tuple[gs.Tensor, int]:
    """(tensor, axis) upstream of `tensor` whose dim `axis` (negative: from the end) reaches it unchanged: through
    ops that keep their input's shape, broadcasts whose other operands have 1 or nothing on that axis
    (`x[:, :1].expand(-1, int(T), -1) * 2 + x`: the Add meets the Expand's entry past the Mul), and ops that move
    the dim to another axis."""
    while tensor.inputs and (node := tensor.inputs[0]).op in SAME_SHAPE | BROADCAST | MOVES:
        if node.op in SAME_SHAPE:
            tensor = node.inputs[0]
            continue
        if node.op in MOVES:
            moved = _moved(sizes, node, axis)
            if moved is None:
                break
            tensor, axis = node.inputs[0], moved
            continue
        shapes = [sizes.shape(t) for t in node.inputs]
        if any(s is None for s in shapes):
            break
        wide = [t for t, s in zip(node.inputs, shapes, strict=True) if -axis <= len(s) and as_expr(s[axis]) != 1]
        if len(wide) != 1:
            break
        tensor = wide[0]
    return tensor, axis


def _moved(sizes: Sizes, node: gs.Node, axis: int) -> int | None:
    """The axis (from the end) of the node's data input that its output's dim `axis` (from the end) is; None where
    the op makes that dim or a shape is unknown."""
    out, data = sizes.shape(node.outputs[0]), sizes.shape(node.inputs[0])
    if out is None or data is None or not -len(out) <= axis < 0:
        return None
    at = len(out) + axis
    if node.op == "Transpose":
        perm = list(node.attrs.get("perm") or reversed(range(len(data))))
        source = perm[at] if len(perm) == len(out) else None
    elif node.op == "Gather":
        index = sizes.shape(node.inputs[1])
        gather = int(node.attrs.get("axis", 0)) % max(len(data), 1)
        source = None if index is None else at if at < gather else \
            at - len(index) + 1 if at >= gather + len(index) else None
    else:  # Unsqueeze (new axes in the output) or Squeeze (dropped axes of the input)
        axes = _axes(sizes, node, len(out) if node.op == "Unsqueeze" else len(data))
        if axes is None:
            return None
        kept = [i for i in range(len(out if node.op == "Unsqueeze" else data)) if i not in axes]
        if node.op == "Unsqueeze":
            source = kept.index(at) if at in kept else None
        else:
            source = kept[at] if len(kept) == len(out) else None
    return None if source is None else source - len(data)


def _axes(sizes: Sizes, node: gs.Node, rank: int) -> set[int] | None:
    """An Unsqueeze's or Squeeze's axes, non-negative in a tensor of `rank` (the attribute before opset 13, the
    constant second input from it on); None where they are not known (a Squeeze of every dim of 1)."""
    if "axes" in node.attrs:
        axes = list(node.attrs["axes"])
    elif len(node.inputs) > 1 and (value := sizes.value(node.inputs[1])) is not None \
            and all(as_expr(v).is_Integer for v in value):
        axes = [int(v) for v in value]
    else:
        return None
    return {a % rank for a in axes} if rank else None


def meeting(consumer: gs.Node, via: gs.Tensor, node: gs.Node) -> gs.Tensor | None:
    """The operand of a Concat `consumer` (other than `via`, which passes `node`'s output along) that meets an entry
    of `node`'s shape, where it does not depend on `node`: the tensor whose dim the rebuilt entry must equal where
    the model runs (`cat([y + x, e.expand(int(B), int(T), 4)], -1)` meets B and T in `y + x`, which a graph input's
    dim may not carry: y's may be 1, helper 134). None where every other operand is computed from `node`, and for
    a broadcast, whose other operand may be 1 there (a mask shared by the batch): the node's own data tells then."""
    if consumer.op != "Concat":
        return None
    after = downstream(node)
    return next((t for t in consumer.inputs if t is not via and isinstance(t, gs.Variable)
                 and not (t.inputs and id(t.inputs[0]) in after)), None)


def downstream(node: gs.Node) -> set[int]:
    """The ids of `node` and every node that reads what it computes, at any distance."""
    seen, queue = {id(node)}, [node]
    while queue:
        for tensor in queue.pop().outputs:
            for reader in tensor.outputs:
                if id(reader) not in seen:
                    seen.add(id(reader))
                    queue.append(reader)
    return seen
