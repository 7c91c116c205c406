"""Output axes held at one size by a broadcast: a length-1 axis widened to a size that a constant sets.

`torch.ones(int(T), 8)` added to a pooled `[B, 1, 8]`, or `pooled.expand(-1, int(T), -1)`, traced at T = 40: the
graph broadcasts the pooled axis to the constant's 40 at every size. The exporter still declares the output axis
dynamic (`frames`, from `dynamic_axes`), and the size analysis finds it fixed (`frozen_outputs`). `held_by` walks
that axis back from the output, through elementwise ops, Transpose and the Expands that keep it, to the node that
widens a 1 to that size: a constant operand of a broadcasting op, an entry of an Expand's shape, ConstantOfShape's
shape. A walk that meets anything else (a Reshape, a Pad, a pool) says where it stopped: those are other rules'.

    if could_hold(ctx, output, axis=1):                  # cheap, onnx's shapes: is there anything to find?
        held = held_by(sizes, output, axis=1, value=40)   # Widening(node=Add '/Add', kind='constant', ...) or why not
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from graphfix.analysis.broadcast import BROADCAST_OPS
from graphfix.analysis.sizes.ops import SAME_SHAPE, is_table

CONSTANT, EXPAND, CONSTANT_OF_SHAPE, TILE, RESIZE = "constant", "expand", "constant-of-shape", "tile", "resize"


@dataclass(frozen=True)
class Widening:
    """`node` widens a length-1 axis of `narrow` to the fixed size: through axis `axis` of the constant operand
    `tensor` (kind CONSTANT), or entry `axis` of the vector `tensor`: a shape (EXPAND; CONSTANT_OF_SHAPE, which has
    no `narrow`), the repeats (TILE), the sizes (RESIZE, which takes `narrow` from any length to that size)."""

    node: gs.Node
    kind: str
    tensor: gs.Tensor
    axis: int
    narrow: gs.Tensor | None


def could_hold(ctx, output: gs.Tensor, axis: int) -> bool:
    """Whether the walk `held_by` takes from axis `axis` of `output` may reach a widening, read from onnx's shapes
    (no size analysis, which a graph without one never pays for): a constant longer than 1 there where it meets a
    computed operand, an Expand or ConstantOfShape on the way."""
    todo, seen = [(output, axis)], set()
    while todo:
        tensor, axis = todo.pop()
        node = tensor.inputs[0] if tensor.inputs else None
        if (tensor.name, axis) in seen or node is None:
            continue
        seen.add((tensor.name, axis))
        if node.op in ("Expand", "ConstantOfShape", "Tile", "Resize"):
            return True
        if node.op in SAME_SHAPE:
            todo.append((node.inputs[0], axis))
        elif node.op == "Transpose" and (perm := node.attrs.get("perm")) is not None:
            todo.append((node.inputs[0], list(perm)[axis]))
        elif node.op in BROADCAST_OPS:
            rank = len(ctx.shape(tensor) or ())
            for operand in node.inputs:
                shape = ctx.shape(operand)
                k = axis - (rank - len(shape)) if shape is not None else -1
                if k < 0:
                    continue
                if is_table(operand):
                    if isinstance(shape[k], int) and shape[k] > 1:
                        return True
                elif shape[k] != 1:
                    todo.append((operand, k))
    return False


def held_by(sizes, output: gs.Tensor, axis: int, value: int) -> Widening | str:
    """The node that widens axis `axis` of `output` (`value` at every size) from 1, or where the walk stopped."""
    todo, seen, stops = [(output, axis)], set(), []
    while todo:
        tensor, axis = todo.pop()
        if (tensor.name, axis) in seen:
            continue
        seen.add((tensor.name, axis))
        node = tensor.inputs[0] if tensor.inputs else None
        if node is None or node.op == "Constant":
            stops.append(f"'{tensor.name}' is a graph input or a constant")
            continue
        step = _step(sizes, node, tensor, axis, value)
        if isinstance(step, Widening):
            return step
        if isinstance(step, str):
            stops.append(step)
        else:
            todo.extend(step)
    return stops[0] if stops else "no node on its way fixes it"


def _step(sizes, node: gs.Node, tensor: gs.Tensor, axis: int, value: int) -> Widening | str | list:
    """What `node` does to axis `axis` of its output `tensor`: widens it (Widening), passes it on from its inputs
    (a list of (tensor, axis)), or something the walk does not follow (why, as text)."""
    if node.op in SAME_SHAPE:
        return [(node.inputs[0], axis)]
    if node.op == "Transpose":
        perm = node.attrs.get("perm")
        rank = len(sizes.shape(tensor) or ())
        return [(node.inputs[0], list(perm)[axis] if perm else rank - 1 - axis)]
    if node.op in BROADCAST_OPS:
        return _broadcast(sizes, node, tensor, axis, value)
    if node.op == "Expand":
        before = _dim(sizes, node.inputs[0], tensor, axis)
        if before == "broadcast" or _is(before, 1):
            return Widening(node, EXPAND, node.inputs[1], axis, node.inputs[0])
        return [(node.inputs[0], before[1])] if _is(before, value) else f"Expand '{node.name}' keeps another size"
    if node.op == "ConstantOfShape":
        return Widening(node, CONSTANT_OF_SHAPE, node.inputs[0], axis, None)
    if node.op == "Tile" and _is(_dim(sizes, node.inputs[0], tensor, axis), 1):
        return Widening(node, TILE, node.inputs[1], axis, node.inputs[0])
    if node.op == "Resize" and len(node.inputs) > 3 and _entry(sizes, node.inputs[3], axis) == value:
        return Widening(node, RESIZE, node.inputs[3], axis, node.inputs[0])
    return f"it stops at {node.op} '{node.name}', an op the walk does not follow"


def _broadcast(sizes, node: gs.Node, tensor: gs.Tensor, axis: int, value: int) -> Widening | str | list:
    """A broadcasting op: follows the computed operands that already have the size there; where only a constant
    has it, that constant widens the others' 1."""
    fixed = [(operand, dim[1]) for operand in node.inputs
             if (dim := _dim(sizes, operand, tensor, axis)) != "broadcast" and _is(dim, value)]
    computed = [(operand, k) for operand, k in fixed if not is_table(operand)]
    if computed:
        return computed
    if len(fixed) != 1:
        return f"{node.op} '{node.name}': no operand's size there is known"
    (constant, k), = fixed
    narrow = next((t for t in node.inputs if t is not constant and not is_table(t)), None)
    return Widening(node, CONSTANT, constant, k, narrow) if narrow is not None else \
        f"{node.op} '{node.name}' combines constants only"


def _dim(sizes, operand: gs.Tensor, out: gs.Tensor, axis: int):
    """(size, axis) of `operand` where it meets axis `axis` of `out`, right-aligned; "broadcast" where it has no
    such axis; (None, k) where its size there is unknown."""
    shape, rank = sizes.shape(operand), len(sizes.shape(out) or ())
    if shape is None:
        return None, None
    k = axis - (rank - len(shape))
    return "broadcast" if k < 0 else (shape[k], k)


def _entry(sizes, vector: gs.Tensor, index: int) -> int | None:
    """Entry `index` of a shape vector where the analysis knows it as a whole number."""
    value = sizes.value(vector)
    entry = value[index] if value is not None and index < len(value) else None
    return int(entry) if entry is not None and getattr(entry, "is_Integer", False) else None


def _is(dim, value: int) -> bool:
    return isinstance(dim, tuple) and dim[0] is not None and dim[0].is_Integer and int(dim[0]) == value
