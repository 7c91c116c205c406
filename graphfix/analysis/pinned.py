"""Constants whose extent along an axis a size constraint further on pins: a width computed in Python while
tracing that no broadcast meets directly.

speechbrain's `length_to_mask(lengths)` without `max_len` takes the mask's width from `lengths.max().item()`.
Traced, `arange(40)` is folded and compared with the lengths `[B, 1]`: a 1 there, so no broadcast sees the 40
(`graphfix.analysis.structured.baked_operands` finds constants that meet a dynamic dim directly). The mask meets
the time dim only later, where attention reshapes it to `[B, 1, 1, T]`: that Reshape's element count holds at
T = 40 only. `pinned_operands` follows such a pinned size back, axis by axis, through elementwise ops to the one
constant that holds it, and names a tensor that carries the size at run time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.broadcast import BROADCAST_OPS
from graphfix.analysis.sizes import Solution, sizes_of, solve
from graphfix.analysis.sizes.arith import same
from graphfix.analysis.sizes.ops import SAME_SHAPE, is_table  # a dim passes SAME_SHAPE ops on its axis
from graphfix.analysis.sizes.solve import solve_length


@dataclass(frozen=True)
class Pinned:
    """A constant whose extent along `axis` is the size `solution` pins (the one value of its symbol at which its
    constraint holds), read as input `index` of `node` on the way to the constraint (and as `readers`, each
    (node, input index), where several are); `carrier` is a graph input and axis of that size."""

    node: gs.Node
    index: int
    const: gs.Tensor
    value: np.ndarray
    axis: int
    solution: Solution
    carrier: tuple[gs.Tensor, int]
    readers: tuple[tuple[gs.Node, int], ...] = ()

    def describe(self) -> str:
        """The finding's words: which constraint holds at one width only, and which constant holds the width."""
        constraint, sym, width, reader = self.solution.constraint, self.solution.symbol, self.solution.value, self.node
        return (f"{constraint.node.op} '{constraint.node.name}' holds only at {sym}={width} ({constraint.left} = "
                f"{constraint.right}, {constraint.detail}): the {width} is the extent of constant "
                f"'{self.const.name}' {list(self.value.shape)} along axis {self.axis}, read by {reader.op} "
                f"'{reader.name}' where nothing meets it with a size; a width computed in Python while tracing "
                "(`.item()` of a maximum, as speechbrain's `length_to_mask(lengths)` takes it from "
                f"`lengths.max().item()`, or `int()` of a size), so onnxruntime fails at every other {sym}")

    def doubt(self) -> str:
        """Why Range(0, the size) for the constant, an arange, is a guess (a fix's reason)."""
        constraint, sym, width = self.solution.constraint, self.solution.symbol, self.solution.value
        return (f"where the model runs, the width is {sym} ({constraint.node.name} needs it: PyTorch's "
                f"own width, a maximum of the lengths, must equal it too); but 0, 1, ..., {width - 1} is "
                f"arange({sym}) (applied, the simplest), arange({sym}).clamp(max=c) for any c >= "
                f"{width - 1}, or another sequence that starts so (a linspace): the graph does not say "
                f"which; nor whether the Python int that gave {width} is used where nothing needs it to "
                "follow the length (a count, a loop bound folded elsewhere)")

    def read_elsewhere(self) -> list[gs.Node]:
        """The nodes that read the constant off the way to the constraint (a count, another shape): rebuilding
        it for the pinned size would change what they compute too."""
        mine = {(id(n), i) for n, i in self.readers}
        return [n for n in self.const.outputs
                if any(t is self.const and (id(n), i) not in mine for i, t in enumerate(n.inputs))]


def widening_constants(ctx) -> bool:
    """Whether a broadcasting op reads a constant longer than 1 on an axis where another operand has 1: a width
    that nothing meets where it is read. Only graphs with one pay for `pinned_operands`' size analysis."""
    for node in ctx.graph.nodes:
        if node.op not in BROADCAST_OPS:
            continue
        shapes = [ctx.shape(t) for t in node.inputs]
        for tensor, shape in zip(node.inputs, shapes, strict=True):
            if is_table(tensor) and shape is not None and \
                    any(_widens(shape, other) for other in shapes if other is not shape):
                return True
    return False


def _widens(shape: list, other: list | None) -> bool:
    """`shape` longer than 1 where `other`, right-aligned, is 1."""
    return other is not None and any(isinstance(d, int) and d > 1 and o == 1
                                     for d, o in zip(reversed(shape), reversed(other), strict=False))


def pinned_operands(ctx, direct: Iterable[gs.Tensor] = ()) -> Iterator[Pinned | str]:
    """Constants that a solved reshape or broadcast constraint reaches through elementwise ops alone, each once,
    but those in `direct` (constants that meet a dynamic dim where they are read: `baked_operands`'); a `str` says
    why a pinned size was not followed to one (for the rule's rejection)."""
    sizes, seen, direct = sizes_of(ctx), set(), {id(t) for t in direct}
    fed = {t.name for t in ctx.model.graph.input}  # an initializer that is also an input: a caller may feed it
    for constraint in sizes.constraints:
        solution, length = (solve(constraint, sizes.solver), None) if _from_data(sizes, constraint) else (None, None)
        if solution is None and _from_data(sizes, constraint):  # a length derived through a floor (Conv frames)
            solution, length = solve_length(constraint, sizes.solver) or (None, None)
        if solution is None or solution.cut is not None or solution.value < 2:
            continue  # a size of 1 is every constant's that broadcasts
        found = {(id(p.const), p.axis): p for p in _sources(ctx, sizes, solution, length)
                 if p.const.name not in fed and id(p.const) not in direct}
        if len(found) != 1:
            if found:
                yield (f"'{constraint.node.name}' pins {solution.symbol}={solution.value}, held by "
                       f"{len(found)} constants: which one follows the size, the graph does not say")
            continue
        (pinned,) = found.values()
        if (id(pinned.const), pinned.axis) not in seen:
            seen.add((id(pinned.const), pinned.axis))
            yield pinned


def _from_data(sizes, constraint) -> bool:
    """A constraint whose fixed size can only be in the data: a broadcast on a known axis, or a Reshape whose
    target is computed at run time (a constant entry above 1 in it may be the baked one: GF004's)."""
    if constraint.kind == "broadcast":
        return constraint.detail.startswith("axis ")
    if constraint.kind != "reshape":
        return False
    target = sizes.value(constraint.node.inputs[1])
    return target is not None and not any(getattr(e, "is_Integer", False) and e > 1 for e in target)


def _sources(ctx, sizes, solution: Solution, length=None) -> Iterator[Pinned]:
    """The constants behind each dim of the constraint's node that holds the pinned value: the data of a Reshape,
    or the operands of a broadcast on its axis. `length`: the derived length the solution's symbol stands for."""
    constraint, value = solution.constraint, solution.value
    carrier = _input_carrier(ctx, sizes, solution.symbol) if length is None else None
    if carrier is None and length is None:
        return
    node = constraint.node
    if constraint.kind == "reshape":
        starts = [(0, axis) for axis, dim in enumerate(sizes.shape(node.inputs[0]) or ()) if _is(dim, value)]
    else:
        rank = len(sizes.shape(node.outputs[0]) or ())
        starts = _aligned(sizes, node, int(constraint.detail.split()[1]) - rank, value)
    memo: dict = {}
    for index, axis in starts:
        ends = _follow(ctx, sizes, node, index, axis, value, memo)
        if ends is not None and len(ends) == 1:
            ((const, const_axis, readers),) = ends.values()
            where = carrier or _derived_carrier(sizes, node, length, readers)
            if where is not None:
                yield Pinned(*readers[0], const, ctx.constant_value(const), const_axis, solution, where, readers)


def _follow(ctx, sizes, node: gs.Node, index: int, axis: int, value: int, memo: dict, depth: int = 32) -> dict | None:
    """From input `index` of `node` at `axis`, back through same-shape and broadcasting ops (every operand holding
    the value there) and `ConstantOfShape(Shape(x))`, to the constants where the value starts: {(constant id, axis):
    (constant, axis, readers)}, readers each (node, input index), or None where a path ends anywhere else (a graph
    input, another op). `memo` holds each input's answer once (graphs rejoin)."""
    key = (id(node), index, axis)
    if key not in memo:
        memo[key] = _follow_once(ctx, sizes, node, index, axis, value, memo, depth)
    return memo[key]


def _follow_once(ctx, sizes, node: gs.Node, index: int, axis: int, value: int, memo: dict, depth: int):
    tensor = node.inputs[index]
    constant = ctx.constant_value(tensor)
    if constant is not None:  # numbers only: a string or bool constant is labels or a mask, not positions
        held = 0 <= axis < constant.ndim and constant.shape[axis] == value and \
            np.issubdtype(constant.dtype, np.number)
        return {(id(tensor), axis): (tensor, axis, ((node, index),))} if held else None
    producer = tensor.inputs[0] if tensor.inputs else None
    if producer is None or depth == 0:
        return None
    if producer.op in SAME_SHAPE:
        return _follow(ctx, sizes, producer, 0, axis, value, memo, depth - 1)
    if producer.op == "Unsqueeze":  # a mask given its feature axis (`mask[..., None]`)
        before = _before_unsqueeze(ctx, sizes, producer, axis)
        return None if before is None else _follow(ctx, sizes, producer, 0, before, value, memo, depth - 1)
    if producer.op == "ConstantOfShape":  # masked_fill's fill, shaped like the mask it fills
        shape = producer.inputs[0].inputs[0] if producer.inputs[0].inputs else None
        if shape is None or shape.op != "Shape" or shape.attrs.get("start", 0) or "end" in shape.attrs:
            return None
        return _follow(ctx, sizes, shape, 0, axis, value, memo, depth - 1)
    if producer.op not in BROADCAST_OPS:
        return None
    rank = len(sizes.shape(producer.outputs[0]) or ())
    found: dict = {}
    for at, operand_axis in _aligned(sizes, producer, axis - rank, value):
        ends = _follow(ctx, sizes, producer, at, operand_axis, value, memo, depth - 1)
        if ends is None:
            return None
        for key, (const, const_axis, readers) in ends.items():  # one constant met twice: both readers
            before = found.get(key, (const, const_axis, ()))[2]
            found[key] = (const, const_axis, before + tuple(r for r in readers if r not in before))
    return found or None


def _before_unsqueeze(ctx, sizes, node: gs.Node, axis: int) -> int | None:
    """The input's axis that output `axis` of an Unsqueeze is, None where the Unsqueeze inserted it."""
    axes = node.attrs.get("axes") if len(node.inputs) < 2 else ctx.constant_value(node.inputs[1])
    rank = len(shape) if (shape := sizes.shape(node.outputs[0])) is not None else None
    if axes is None or rank is None:
        return None
    inserted = {int(a) % rank for a in np.reshape(axes, -1)}
    return None if axis in inserted else axis - sum(a < axis for a in inserted)


def _aligned(sizes, node: gs.Node, axis_from_end: int, value: int) -> list[tuple[int, int]]:
    """(input index, axis) of each input of a broadcasting `node` whose dim right-aligned at `axis_from_end`
    (negative) is `value`; a constant's own shape counts where the analysis has none."""
    hits = []
    for index, tensor in enumerate(node.inputs):
        shape = sizes.shape(tensor)
        if shape is None and isinstance(tensor, gs.Constant):
            shape = tensor.shape
        if shape is not None and -axis_from_end <= len(shape) and _is(shape[axis_from_end], value):
            hits.append((index, len(shape) + axis_from_end))
    return hits


def _is(dim, value: int) -> bool:
    return dim is not None and same(dim, value)


def _input_carrier(ctx, sizes, symbol) -> tuple[gs.Tensor, int] | None:
    """A graph input and axis whose size is `symbol`: available wherever the constant is read."""
    for tensor in ctx.graph.inputs:
        for axis, dim in enumerate(sizes.shape(tensor) or ()):
            if dim is not None and same(dim, symbol):
                return tensor, axis
    return None


def _derived_carrier(sizes, node: gs.Node, length, readers) -> tuple[gs.Tensor, int] | None:
    """A tensor upstream of the constraint's `node` with a dim of the derived `length` (a Conv front end's frames),
    and its axis, that none of the constant's `readers` computes: a Shape of it then feeds them, no cycle."""
    avoid = {id(reader) for reader, _ in readers}
    for tensor in node.inputs:
        found = sizes.carrier(length, tensor)
        if found is not None and not _computed_by(found[0], avoid):
            return found
    return None


def _computed_by(tensor: gs.Tensor, nodes: set[int], limit: int = 20000) -> bool:
    """Whether any of `nodes` (ids) is upstream of `tensor` (True too past `limit` nodes: not shown apart)."""
    stack, seen = [tensor], set()
    while stack:
        for producer in stack.pop().inputs:
            if id(producer) in nodes or len(seen) > limit:
                return True
            if id(producer) not in seen:
                seen.add(id(producer))
                stack.extend(producer.inputs)
    return False


def copies(ctx, pinned: Pinned) -> list[str]:
    """Other constants of the graph that hold the same positions 0 .. N-1 (N the pinned size): where the trace
    folded one Python int into several constants, rebuilding one leaves the others at N."""
    width = pinned.solution.value
    return [t.name for t in ctx.tensors.values() if t is not pinned.const and _positions(ctx, t, width)]


def kept_because(ctx, pinned: Pinned) -> str:
    """Why the constant must keep its width though the size is pinned ('' where nothing stops a rebuild): the
    Python int that gave it also reaches what nothing pins, other copies or other readers, that would change too."""
    others, elsewhere = copies(ctx, pinned), pinned.read_elsewhere()
    if others:
        return (f"and so is '{others[0]}'" + (f" (and {len(others) - 1} more)" if len(others) > 1 else "") +
                ": if they are the same Python int, rebuilding one leaves the others at the export size")
    if elsewhere:
        return (f"{elsewhere[0].op} '{elsewhere[0].name}' reads it too, where nothing needs it to follow the length: "
                "rebuilding it would change what that computes")
    return ""


def _positions(ctx, tensor: gs.Tensor, width: int) -> bool:
    """`tensor` is a constant 0, 1, ..., width - 1 along one axis (its shape looked at before its values)."""
    if isinstance(tensor, gs.Constant):
        shape = tensor.shape
    elif tensor.inputs and tensor.inputs[0].op == "Constant":
        shape = getattr(tensor.inputs[0].attrs.get("value"), "shape", None)
    else:
        return False
    if shape is None or max(shape, default=0) != width or int(np.prod(shape)) != width:
        return False
    value = ctx.constant_value(tensor)
    return value is not None and np.issubdtype(value.dtype, np.number) and \
        np.array_equal(value.reshape(-1), np.arange(width))
