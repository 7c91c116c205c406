"""Small shape-vector evaluation and the canonical repeat_interleave subgraphs (used by GF002).

`ShapeVec` evaluates 0-d/1-d integer tensors (shape arithmetic: Shape, Gather, Slice, Concat, OneHot, ...)
element by element. An element is an `int`, or a `Sym`: a tensor's dynamic dimension (`Sym("dim", t, j)`)
or an element of a tensor that cannot be folded (`Sym("val", t, i)`). Evaluation is memoised per tensor and
bounded in depth, so a rule that evaluates a few vectors per candidate stays linear in graph size.

The builders append nodes to a graph and return the new output tensor; they never clean up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_graphsurgeon as gs

if TYPE_CHECKING:
    from graphfix.context import RuleContext

MAX_DEPTH = 24
_PASS_THROUGH = {"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
_SUPPORTED = _PASS_THROUGH | {"Gather", "Slice", "Concat", "ConstantOfShape", "OneHot", "Where",
                              "Add", "Sub", "Mul", "Div", "Equal"}
_ARITH: dict[str, Callable[[int, int], Any]] = {
    "Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
    "Div": lambda a, b: int(a / b) if b else None, "Equal": lambda a, b: a == b,
}


@dataclass(frozen=True)
class Sym:
    """An element whose value is only known at run time: a dim of a tensor or an element of a tensor."""

    kind: str  # "dim" | "val"
    tensor: Any
    index: int

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sym) and (self.kind, self.index) == (other.kind, other.index) \
            and self.tensor is other.tensor

    def __hash__(self) -> int:
        return hash((self.kind, id(self.tensor), self.index))


Elem = int | bool | Sym


class ShapeVec:
    """Evaluates small integer tensors of one graph (see the module docstring)."""

    def __init__(self, constant_value: Callable[[gs.Tensor], np.ndarray | None],
                 shape_of: Callable[[gs.Tensor], list | None]):
        self.constant_value = constant_value
        self.shape_of = shape_of
        self._memo: dict[int, tuple[list[Elem], bool] | None] = {}

    def elems(self, tensor: gs.Tensor) -> list[Elem] | None:
        got = self.eval(tensor)
        return None if got is None else got[0]

    def eval(self, tensor: gs.Tensor, depth: int = 0) -> tuple[list[Elem], bool] | None:
        """(elements, is_scalar) or None when the tensor is not a small known-length integer vector."""
        key = id(tensor)
        if depth > MAX_DEPTH:
            return self._memo.get(key)
        if key not in self._memo:
            self._memo[key] = self._eval(tensor, depth)
        return self._memo[key]

    def _eval(self, tensor: gs.Tensor, depth: int) -> tuple[list[Elem], bool] | None:
        value = self.constant_value(tensor)
        if value is not None:
            if value.ndim > 1 or value.size > 4096 or not (np.issubdtype(value.dtype, np.integer)
                                                           or value.dtype == np.bool_):
                return None
            return [v.item() for v in value.reshape(-1)], value.ndim == 0
        node = tensor.inputs[0] if tensor.inputs else None
        folded = self._node(node, depth) if node is not None and len(node.outputs) == 1 else None
        return folded if folded is not None else self._opaque(tensor)

    def _opaque(self, tensor: gs.Tensor) -> tuple[list[Elem], bool] | None:
        shape = self.shape_of(tensor)
        if shape is None or len(shape) > 1 or (shape and not isinstance(shape[0], int)):
            return None
        return [Sym("val", tensor, i) for i in range(shape[0] if shape else 1)], not shape

    def _node(self, node: gs.Node, depth: int) -> tuple[list[Elem], bool] | None:
        op, attrs = node.op, node.attrs
        if op == "Shape":
            return self._shape(node, depth)
        if op not in _SUPPORTED:
            return None
        ins = [self.eval(t, depth + 1) if t.name or isinstance(t, gs.Constant) else None for t in node.inputs]
        if not ins or ins[0] is None:
            return None
        data, scalar = ins[0]
        if op in _PASS_THROUGH:
            out_shape = self.shape_of(node.outputs[0])
            return data, (out_shape == [] if out_shape is not None else scalar and op != "Unsqueeze")
        if op == "Gather" and len(ins) == 2 and ins[1] is not None and attrs.get("axis", 0) == 0:
            idx, idx_scalar = ins[1]
            if not all(isinstance(i, int) and -len(data) <= i < len(data) for i in idx):
                return None
            return [data[i] for i in idx], idx_scalar
        if op == "Slice":
            return self._slice(data, ins[1:])
        if op == "Concat":
            if any(i is None for i in ins):
                return None
            return [e for part, _ in ins for e in part], False
        if op == "ConstantOfShape":
            fill = attrs.get("value")
            fill = np.asarray(fill.values if isinstance(fill, gs.Constant) else (0 if fill is None else fill))
            if len(data) != 1 or not isinstance(data[0], int) or data[0] > 4096:
                return None
            return [fill.reshape(-1)[0].item()] * data[0], False
        if op == "OneHot":
            return self._onehot(ins, attrs)
        if op in _ARITH or op == "Where":
            return self._elementwise(op, ins)
        return None

    def _shape(self, node: gs.Node, depth: int) -> tuple[list[Elem], bool] | None:
        source = node.inputs[0]
        shape = self.shape_of(source)
        if (shape is None or not all(isinstance(d, int) for d in shape)) and source.dtype in (np.int64, np.int32, None):
            known = self.eval(source, depth + 1)  # the length of a shape vector we can read
            shape = shape if known is None else ([] if known[1] else [len(known[0])])
        if shape is None:
            return None
        rank = len(shape)
        start, end = node.attrs.get("start", 0), node.attrs.get("end", rank)
        dims = [d if isinstance(d, int) else Sym("dim", source, j) for j, d in enumerate(shape)]
        return dims[slice(start, end)], False

    @staticmethod
    def _slice(data: list[Elem], args: list) -> tuple[list[Elem], bool] | None:
        if len(args) < 2 or any(a is None for a in args):
            return None
        values = [a[0] for a in args]
        if not all(len(v) == 1 and isinstance(v[0], int) for v in values):
            return None
        start, end = values[0][0], values[1][0]
        axis = values[2][0] if len(values) > 2 else 0
        step = values[3][0] if len(values) > 3 else 1
        if axis not in (0, -1) or step != 1:
            return None
        return data[start:end], False

    @staticmethod
    def _onehot(ins: list, attrs: dict) -> tuple[list[Elem], bool] | None:
        if len(ins) != 3 or any(i is None for i in ins) or attrs.get("axis", -1) not in (-1, 1):
            return None
        (indices, _), (depth, _), (values, _) = ins
        if len(indices) != 1 or len(depth) != 1 or len(values) != 2:
            return None
        index, size = indices[0], depth[0]
        if not (isinstance(index, int) and isinstance(size, int)) or not -size <= index < size:
            return None
        row = [values[0]] * size
        row[index % size] = values[1]
        return row, False

    @staticmethod
    def _elementwise(op: str, ins: list) -> tuple[list[Elem], bool] | None:
        if any(i is None for i in ins):
            return None
        length = max(len(v) for v, _ in ins)
        if any(len(v) not in (1, length) for v, _ in ins):
            return None
        cols = [[v[k if len(v) > 1 else 0] for v, _ in ins] for k in range(length)]
        out = [_apply(op, col) for col in cols]
        if any(e is None for e in out):
            return None
        return out, all(s for _, s in ins)


def _apply(op: str, col: list[Elem]) -> Elem | None:
    if op == "Where":
        cond, a, b = col
        return (a if cond else b) if isinstance(cond, bool | int) else None
    a, b = col
    if isinstance(a, int) and isinstance(b, int):
        return _ARITH[op](a, b)
    if op == "Equal":
        if a == b:
            return True
        # Dims and repeat counts are never negative: comparing one with a negative constant is False.
        other = b if isinstance(a, Sym) else a
        return False if isinstance(other, int) and other < 0 else None
    if op == "Mul" and 1 in (a, b):
        return b if a == 1 else a
    if op in ("Add", "Sub") and b == 0:
        return a
    return None


# ------------------------------------------------------------------------- pieces of split inputs (GF002)

def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def chunk_source(tensor: gs.Tensor) -> tuple[gs.Tensor, int, str] | None:
    """(input, axis, kind) when `tensor` is one piece of a Split (or SequenceAt of a SplitToSequence)."""
    node = producer(tensor)
    if node is not None and node.op == "Split":
        return node.inputs[0], node.attrs.get("axis", 0), "split"
    if node is not None and node.op == "SequenceAt":
        return split_to_sequence(node.inputs[0])
    return None


def chunk_index(ctx: RuleContext, tensor: gs.Tensor) -> int | None:
    node = producer(tensor)
    if node.op == "Split":
        return node.outputs.index(tensor)
    value = ctx.constant_value(node.inputs[1])
    return int(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def split_covers(ctx: RuleContext, vec: ShapeVec, piece: gs.Tensor, count: int) -> bool:
    """The split yields exactly `count` pieces of size 1 (so the branches see the whole input)."""
    node = producer(piece)
    x, axis = node.inputs[0], node.attrs.get("axis", 0)
    shape = ctx.shape(x) or []
    if node.op == "SequenceAt":
        node = producer(node.inputs[0])
    if node.op == "Split" and len(node.outputs) != count:
        return False
    sizes = node.attrs.get("split") or (vec.elems(node.inputs[1]) if len(node.inputs) > 1 else None)
    if sizes is None and node.op == "Split":
        return bool(shape) and shape[axis % len(shape)] == count
    if sizes is None or (len(sizes) == 1 and node.op == "SplitToSequence"):
        return unit_split(vec, node) and bool(shape) and shape[axis % len(shape)] == count
    return list(sizes) == [1] * count


def unit_split(vec: ShapeVec, node: gs.Node) -> bool:
    """A SplitToSequence into pieces of size 1 (split = 1, a vector of ones, or ConstantOfShape(value=1))."""
    split = node.inputs[1]
    sizes = vec.elems(split)
    if sizes is not None:
        return bool(sizes) and all(s == 1 for s in sizes)
    maker = producer(split)
    fill = maker.attrs.get("value") if maker is not None and maker.op == "ConstantOfShape" else None
    return fill is not None and np.asarray(getattr(fill, "values", fill)).reshape(-1).tolist() == [1]


def split_to_sequence(seq: gs.Tensor) -> tuple[gs.Tensor, int, str] | None:
    node = producer(seq)
    if node is None or node.op != "SplitToSequence" or len(node.inputs) < 2:
        return None
    return node.inputs[0], node.attrs.get("axis", 0), "sequence"


# ----------------------------------------------------------------------------------------------- builders

class Builder:
    """Appends nodes to `graph` with names derived from `prefix`; opset-aware where ops changed signature."""

    def __init__(self, graph: gs.Graph, prefix: str, opset: int):
        self.graph, self.prefix, self.opset = graph, prefix, opset
        self.count = 0

    def const(self, values: Any, dtype=np.int64) -> gs.Constant:
        self.count += 1
        return gs.Constant(f"{self.prefix}_c{self.count}", np.asarray(values, dtype=dtype))

    def op(self, op: str, inputs: list, attrs: dict | None = None, dtype=np.int64) -> gs.Variable:
        self.count += 1
        out = gs.Variable(f"{self.prefix}_{op.lower()}{self.count}", dtype=dtype)
        self.graph.nodes.append(gs.Node(op, f"{self.prefix}/{op}_{self.count}", attrs or {}, inputs, [out]))
        return out

    def unsqueeze(self, tensor: gs.Tensor, axis: int, dtype=None) -> gs.Variable:
        if self.opset >= 13:
            return self.op("Unsqueeze", [tensor, self.const([axis])], dtype=dtype)
        return self.op("Unsqueeze", [tensor], {"axes": [axis]}, dtype=dtype)

    def shape(self, tensor: gs.Tensor, start: int, end: int | None = None) -> gs.Variable:
        if self.opset >= 15:
            attrs = {"start": start} if end is None else {"start": start, "end": end}
            return self.op("Shape", [tensor], attrs)
        full = self.op("Shape", [tensor])
        return self.op("Slice", [full, self.const([start]), self.const([end if end is not None else 2**62])])

    def elem(self, item: Elem) -> gs.Tensor:
        """A 1-element int64 vector holding `item`."""
        if isinstance(item, int):
            return self.const([item])
        if item.kind == "dim":
            return self.shape(item.tensor, item.index, item.index + 1)
        flat = self.op("Reshape", [item.tensor, self.const([-1])], dtype=None)
        picked = self.op("Slice", [flat, self.const([item.index]), self.const([item.index + 1])], dtype=None)
        return self.op("Cast", [picked], {"to": 7})


def uniform_repeat(b: Builder, x: gs.Tensor, shape: list, dim: int, repeats: Elem, out_dtype) -> gs.Variable:
    """x.unsqueeze(dim+1).expand(..., repeats, ...).reshape(merged): repeat_interleave with one count.

    Expand broadcasts (1s keep the input's dims), so its shape needs no Shape arithmetic; the Reshape target
    uses 0 for leading dims and constants for known trailing dims, and reads the trailing dims with one Shape
    only when two or more of the dims it must spell out are dynamic.
    """
    rank = len(shape)
    unsq = b.unsqueeze(x, dim + 1, dtype=out_dtype)
    ones_before, ones_after = [1] * (dim + 1), [1] * (rank - dim - 1)
    if isinstance(repeats, int):
        expand_shape: gs.Tensor = b.const([*ones_before, repeats, *ones_after])
    else:
        parts = [b.const(ones_before), b.elem(repeats), b.const(ones_after)]
        expand_shape = b.op("Concat", parts, {"axis": 0})
    expanded = b.op("Expand", [unsq, expand_shape], dtype=out_dtype)
    trailing = shape[dim + 1:]
    merged = shape[dim] * repeats if isinstance(shape[dim], int) and isinstance(repeats, int) else None
    unknown = [j for j, d in enumerate(trailing) if not isinstance(d, int)]
    if not unknown:
        target: gs.Tensor = b.const([0] * dim + [-1] + trailing)
    elif merged is not None and len(unknown) == 1:
        target = b.const([0] * dim + [merged] + [-1 if j in unknown else d for j, d in enumerate(trailing)])
    else:
        target = b.op("Concat", [b.const([0] * dim + [-1]), b.shape(x, dim + 1)], {"axis": 0})
    return b.op("Reshape", [expanded, target], dtype=out_dtype)


def indexed_repeat(b: Builder, x: gs.Tensor, dim: int, repeats: np.ndarray | gs.Tensor,
                   out_dtype) -> gs.Variable:
    """Gather(x, indices, axis=dim), the indices being arange(n) repeated per element.

    Constant repeats give constant indices (the CumSum folded); a run-time repeats tensor gets the dynamo
    exporter's computation: cs = CumSum(r); indices[k] = count(cs <= k) for k in Range(0, cs[-1]).
    """
    if isinstance(repeats, np.ndarray):
        indices: gs.Tensor = b.const(np.repeat(np.arange(repeats.size), repeats.astype(np.int64)))
    else:
        reps = b.op("Cast", [repeats], {"to": 7})
        cums = b.op("CumSum", [reps, b.const(0)])
        total = b.op("Gather", [cums, b.const(-1)], {"axis": 0})
        positions = b.op("Range", [b.const(0), total, b.const(1)])
        le = b.op("LessOrEqual", [b.unsqueeze(cums, 0), b.unsqueeze(positions, 1)], dtype=np.bool_)
        counts = b.op("Cast", [le], {"to": 7})
        if b.opset >= 13:
            indices = b.op("ReduceSum", [counts, b.const([1])], {"keepdims": 0})
        else:
            indices = b.op("ReduceSum", [counts], {"axes": [1], "keepdims": 0})
    return b.op("Gather", [x, indices], {"axis": dim}, dtype=out_dtype)


def replace_repeat_interleave(x: gs.Tensor, dim: int, repeats: Any, output: gs.Tensor, shape: list, opset: int):
    """The fix: compute `output` as repeat_interleave(x, repeats, dim) with the canonical subgraph (uniform repeats:
    Unsqueeze → Expand → Reshape; per-element ones: a Gather of computed indices), detaching what produced it."""

    def apply(graph: gs.Graph) -> None:
        b = Builder(graph, f"gf002_{output.name}", opset)
        counts = repeats
        if isinstance(counts, np.ndarray) and counts.size and (counts == counts[0]).all():
            counts = int(counts[0])
        if isinstance(counts, np.ndarray | gs.Tensor):
            y = indexed_repeat(b, x, dim, counts, output.dtype)
        else:
            y = uniform_repeat(b, x, shape, dim, counts, output.dtype)
        node = y.inputs[0]
        output.inputs.clear()  # detach the old subgraph; the engine's clean-up removes it
        node.outputs.clear()
        node.outputs.append(output)

    return apply
