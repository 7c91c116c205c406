"""Output axes held at one size by a broadcast: a length-1 axis widened to a size that a constant sets.

`torch.ones(int(T), 8)` added to a pooled `[B, 1, 8]`, or `pooled.expand(-1, int(T), -1)`, traced at T = 40: the
graph broadcasts the pooled axis to the constant's 40 at every size. The exporter still declares the output axis
dynamic (`frames`, from `dynamic_axes`), and the size analysis finds it fixed (`frozen_outputs`). `held_by` walks
that axis back from the output, through elementwise ops, Transpose, Slice, Unsqueeze and Squeeze, a MatMul by a
weight, a Conv or a Pool along a spatial axis (a fixed size in, a fixed size out) and the Expands that keep it, to
the node that widens a 1 to that size: a constant operand of a broadcasting op, an entry of an Expand's shape, of
ConstantOfShape's shape, of Tile's repeats, of a Resize's sizes. Every way the size reaches the output must end
so: a way that holds it otherwise (a Reshape, a global or adaptive pool, a learned table of as many rows)
explains the size without a Python int, and the walk says where it stopped.

    if could_hold(ctx, [(output, 1)]):                 # cheap, onnx's shapes: is there anything to find?
        held = held_by(sizes, output, axis=1)             # Widening(node=Add '/Add', kind='constant', ...) or why not
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.broadcast import BROADCAST_OPS
from graphfix.analysis.constants import arange_axis
from graphfix.analysis.sizes.ops import SAME_SHAPE, is_table
from graphfix.analysis.structured import is_uniform
from graphfix.io.sources import known_values

CONSTANT, EXPAND, CONSTANT_OF_SHAPE, TILE, RESIZE = "constant", "expand", "constant-of-shape", "tile", "resize"
# ops whose output length along a spatial axis is a function of the input's there alone (helper 106: a stride-2
# Conv, a ConvTranspose, a MaxPool after the resize, each written with exit 0 while a 'same' Conv was read)
WINDOWED = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"})


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
    value: int  # the size it widens to (a Slice further on may cut it)


def could_hold(ctx, axes: Iterable[tuple[gs.Tensor, int]]) -> bool:
    """Whether the walk `held_by` takes from some axis of an output (`axes`: each output and axis) may reach a
    widening, read from onnx's shapes (no size analysis, which a graph without one never pays for): a constant
    longer than 1 there where it meets a computed operand, an Expand or ConstantOfShape on the way. A way where
    onnx's inference names the dim after a graph input's follows that input: it holds nothing, and the walk leaves
    it (a Llama's logits, `seq` back to its ids). One walk for every output: a tensor and axis is looked at once
    (helper 108: a walk per output, each reading every graph input, took minutes on 20,000 outputs)."""
    follows = {d for t in ctx.graph.inputs for d in (ctx.shape(t) or ()) if isinstance(d, str)}
    todo, seen = [(output, axis, output) for output, axis in axes], set()
    while todo:
        tensor, axis, start = todo.pop()
        node = tensor.inputs[0] if tensor.inputs else None
        if (id(tensor), axis, tensor is start) in seen or node is None:
            continue
        seen.add((id(tensor), axis, tensor is start))
        shape = ctx.shape(tensor) if tensor is not start else None  # an output's dims are its declaration
        if shape is not None and axis < len(shape) and shape[axis] in follows:
            continue
        if node.op in ("Expand", "ConstantOfShape", "Tile", "Resize"):
            return True
        # MatMul: its rows are its first input's; a Conv's or a Pool's spatial axis (or batch) follows its input's
        if node.op in SAME_SHAPE or node.op in ("Slice", "MatMul") or (node.op in WINDOWED and axis != 1):
            todo.append((node.inputs[0], axis, start))
        elif node.op in ("Unsqueeze", "Squeeze"):  # any axis of the input may be the one: generous, it is a gate
            todo.extend((node.inputs[0], k, start) for k in range(len(ctx.shape(node.inputs[0]) or ())))
        elif node.op == "Transpose" and (perm := node.attrs.get("perm")) is not None:
            todo.append((node.inputs[0], list(perm)[axis], start))
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
                    todo.append((operand, k, start))
    return False


MAX_DEPTH = 400  # nodes on one way back from an output: past it, the walk says so


def held_by(sizes, output: gs.Tensor, axis: int) -> Widening | str:
    """The node that widens axis `axis` of `output` (fixed at every size) from 1, or where the walk stopped.
    Every way the size reaches the output must end in a widening: one that holds it otherwise (a MatMul of
    learned queries beside `zeros_like(queries)`) explains the size without one, and the walk names it."""
    return _held(sizes, output, axis, {}, 0)


def _held(sizes, tensor: gs.Tensor, axis: int, memo: dict, depth: int) -> Widening | str:
    key = (id(tensor), axis)
    if key in memo:
        return memo[key]
    memo[key] = f"'{tensor.name}' is reached again (a cycle)"
    value = _entry_of(sizes.shape(tensor), axis)
    node = tensor.inputs[0] if tensor.inputs else None
    if value is None or value < 2:
        found = f"'{tensor.name}' has no fixed size above 1 on axis {axis}"
    elif depth > MAX_DEPTH:
        found = f"more than {MAX_DEPTH} nodes back from the output"
    elif node is None or node.op == "Constant":
        found = f"'{tensor.name}' is a graph input or a constant"
    else:
        found = _step(sizes, node, tensor, axis, value)
        if isinstance(found, list):
            ways = [_held(sizes, t, k, memo, depth + 1) for t, k in found]
            found = next((w for w in ways if isinstance(w, str)), ways[0])
    memo[key] = found
    return found


def _step(sizes, node: gs.Node, tensor: gs.Tensor, axis: int, value: int) -> Widening | str | list:
    """What `node` does to axis `axis` of its output `tensor`: widens it (Widening), passes it on from its inputs
    (a list of (tensor, axis), each of which must hold it), or something the walk does not follow (why, as
    text)."""
    if node.op in SAME_SHAPE or node.op == "Slice":  # a Slice cuts a fixed size from a fixed size
        return [(node.inputs[0], axis)]
    if node.op == "Transpose":
        perm = node.attrs.get("perm")
        rank = len(sizes.shape(tensor) or ())
        return [(node.inputs[0], list(perm)[axis] if perm else rank - 1 - axis)]
    if node.op in ("Unsqueeze", "Squeeze"):
        source = _unsqueezed_axis(sizes, node, axis)
        return [(node.inputs[0], source)] if source is not None else f"{node.op} '{node.name}': axes not known"
    if node.op in BROADCAST_OPS:
        return _broadcast(sizes, node, tensor, axis, value)
    if node.op == "MatMul" and is_table(node.inputs[1]) and axis < len(sizes.shape(tensor) or ()) - 1:
        return [(node.inputs[0], axis)]  # rows times a weight: a row axis is the input's
    if node.op in WINDOWED and axis != 1 and _fixed(_dim(sizes, node.inputs[0], tensor, axis)):
        return [(node.inputs[0], axis)]  # a fixed size in, a fixed size out: a head after a resize (DPT's convs)
    if node.op == "Expand":
        before = _dim(sizes, node.inputs[0], tensor, axis)
        if before == "broadcast" or _is(before, 1):
            return Widening(node, EXPAND, node.inputs[1], axis, node.inputs[0], value)
        return [(node.inputs[0], before[1])] if _is(before, value) else f"Expand '{node.name}' keeps another size"
    if node.op == "ConstantOfShape":
        return Widening(node, CONSTANT_OF_SHAPE, node.inputs[0], axis, None, value)
    if node.op == "Tile" and _is(_dim(sizes, node.inputs[0], tensor, axis), 1):
        return Widening(node, TILE, node.inputs[1], axis, node.inputs[0], value)
    if node.op == "Resize" and len(node.inputs) > 3 and _entry(sizes, node.inputs[3], axis) == value:
        return Widening(node, RESIZE, node.inputs[3], axis, node.inputs[0], value)
    return f"it stops at {node.op} '{node.name}', an op the walk does not follow"


def _unsqueezed_axis(sizes, node: gs.Node, axis: int) -> int | None:
    """The input axis of an Unsqueeze or Squeeze that becomes output axis `axis` (None where it is a new axis or
    the axes are not known)."""
    out_rank, in_rank = len(sizes.shape(node.outputs[0]) or ()), len(sizes.shape(node.inputs[0]) or ())
    given = node.attrs.get("axes")
    if given is None and len(node.inputs) > 1:
        given = sizes.value(node.inputs[1])
    if given is None or not out_rank or not in_rank:
        return None
    try:
        axes = {int(a) % (out_rank if node.op == "Unsqueeze" else in_rank) for a in given}
    except TypeError:  # an axis the analysis knows only as an expression
        return None
    kept = [a for a in range(out_rank) if a not in axes] if node.op == "Unsqueeze" else \
        [a for a in range(in_rank) if a not in axes]
    if node.op == "Unsqueeze":
        return kept.index(axis) if axis in kept else None
    return kept[axis] if axis < len(kept) else None


def reads_inputs(tensor: gs.Tensor) -> bool:
    """Whether a graph input reaches `tensor` (a tensor computed from weights alone does not: learned slots)."""
    todo, seen = [tensor], set()
    while todo:
        current = todo.pop()
        if id(current) in seen or isinstance(current, gs.Constant):
            continue
        seen.add(id(current))
        if not current.inputs:
            return True
        todo.extend(current.inputs[0].inputs)
    return False


def _broadcast(sizes, node: gs.Node, tensor: gs.Tensor, axis: int, value: int) -> Widening | str | list:
    """A broadcasting op: follows the computed operands that already have the size there; where only a constant
    has it, that constant widens the others' 1."""
    fixed = [(operand, dim[1]) for operand in node.inputs
             if (dim := _dim(sizes, operand, tensor, axis)) != "broadcast" and _is(dim, value)]
    computed = [(operand, k) for operand, k in fixed if not is_table(operand)]
    learned = next((operand for operand, k in fixed if is_table(operand) and _learned(operand, k)), None)
    if computed and learned is not None:  # a learned table of that many rows holds the size too: a model constant
        return f"{node.op} '{node.name}' meets '{learned.name}', a learned table of {value} along that axis"
    if computed:
        return computed
    if len(fixed) != 1:
        return f"{node.op} '{node.name}': no operand's size there is known"
    (constant, k), = fixed
    narrow = next((t for t in node.inputs if t is not constant and not is_table(t)), None)
    return Widening(node, CONSTANT, constant, k, narrow, value) if narrow is not None else \
        f"{node.op} '{node.name}' combines constants only"


def size_family(values: np.ndarray, axis: int) -> str | None:
    """How a constant's values along `axis` follow from its size: "uniform" (ones, zeros, full along it),
    "arange" (0, 1, 2, ...), or None (a learned table)."""
    if is_uniform(values, [axis]):
        return "uniform"
    progression = arange_axis(values, [axis])
    return "arange" if progression is not None and progression[:2] == (0.0, 1.0) else None


def _learned(table: gs.Tensor, axis: int) -> bool:
    """Whether a constant's values along `axis` follow from no size (`size_family` None): a learned table, or
    values not read here (external data)."""
    node = table.inputs[0] if table.inputs else None
    values = known_values(table if isinstance(table, gs.Constant) else node.attrs.get("value") if node else None)
    if values is None or values.ndim <= axis:
        return values is None
    return size_family(values, axis) is None


def _dim(sizes, operand: gs.Tensor, out: gs.Tensor, axis: int):
    """(size, axis) of `operand` where it meets axis `axis` of `out`, right-aligned; "broadcast" where it has no
    such axis; (None, k) where its size there is unknown."""
    shape, rank = sizes.shape(operand), len(sizes.shape(out) or ())
    if shape is None:
        return None, None
    k = axis - (rank - len(shape))
    return "broadcast" if k < 0 else (shape[k], k)


def _entry(sizes, vector: gs.Tensor, index: int) -> int | None:
    """Entry `index` of a shape vector where the analysis knows it as a whole number: of the vector, or of the
    piece of a Concat that holds it where the others are not known (`[*x.shape[:2], 56, 84]` of a tensor whose
    sizes the analysis lost: DepthAnything's head, helper 105)."""
    value = sizes.value(vector)
    if value is None and vector.inputs and vector.inputs[0].op == "Concat":
        offset = 0
        for piece in vector.inputs[0].inputs:
            width = _entry_of(sizes.shape(piece), 0)
            if width is None:
                return None
            if offset <= index < offset + width:
                return _entry(sizes, piece, index - offset)
            offset += width
    entry = value[index] if value is not None and index < len(value) else None
    return int(entry) if entry is not None and getattr(entry, "is_Integer", False) else None


def _entry_of(shape, axis: int) -> int | None:
    dim = shape[axis] if shape is not None and axis < len(shape) else None
    return int(dim) if dim is not None and getattr(dim, "is_Integer", False) else None


def _fixed(dim) -> bool:
    """Whether `_dim` found a whole number there."""
    return isinstance(dim, tuple) and dim[0] is not None and dim[0].is_Integer


def _is(dim, value: int) -> bool:
    return isinstance(dim, tuple) and dim[0] is not None and dim[0].is_Integer and int(dim[0]) == value
