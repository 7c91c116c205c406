"""How each op maps the sizes of its inputs to the sizes of its outputs, and which constraint it imposes.

A mixin of `Sizes`: each `_op_<Op>` reads its inputs' shapes and small values with `_in_shape`/`_in_value`,
records constraints with `_require` and writes its outputs with `_set`. An op without a handler keeps onnx's
shapes for its outputs. The arithmetic itself (floor division, equality, a window's output length) is in
`graphfix.analysis.sizes.arith`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.sizes.arith import Shape, window_output
from graphfix.analysis.sizes.regroup import RegroupShapes
from graphfix.analysis.sizes.spread import SpreadShapes

if TYPE_CHECKING:
    from sympy import Expr

INT_BIG = 2**31 - 1  # ends at or past this mean "to the end"
BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Where", "Equal", "Less", "LessOrEqual", "Greater",
             "GreaterOrEqual", "And", "Or", "Xor", "Max", "Min", "Mod", "PRelu", "BitShift", "Sum", "Mean"}
SAME_SHAPE = {"Identity", "Cast", "CastLike", "Relu", "Gelu", "Erf", "Sqrt", "Softmax", "LogSoftmax", "Tanh",
              "Sigmoid", "Neg", "Not", "IsNaN", "IsInf", "Exp", "Log", "Abs", "Reciprocal", "Sin", "Cos", "Clip",
              "LeakyRelu", "Elu", "Softplus", "Round", "Floor", "Ceil", "BatchNormalization", "Dropout",
              "LayerNormalization", "InstanceNormalization", "GroupNormalization", "Trilu", "HardSigmoid",
              "HardSwish", "Mish", "Sign", "SimplifiedLayerNormalization", "SkipLayerNormalization", "Silu",
              "QuickGelu", "FastGelu", "BiasGelu"}

class OpShapes(RegroupShapes, SpreadShapes):
    """Shape (and shape-vector value) propagation rules, one method per op."""

    def _one(self, d) -> bool:
        """A dim of 1, which broadcasting and Squeeze drop: asked of the arithmetic (see `plainly_number`)."""
        return d is not None and (d == 1 if isinstance(d, int) else self.num.plainly_number(d) and d == 1)

    def _broadcast(self, node: gs.Node) -> None:
        shapes = [self._in_shape(node, k) for k in range(len(node.inputs)) if _present(node.inputs[k])]
        if any(s is None for s in shapes):
            return
        rank = max(len(s) for s in shapes)
        out = []
        for j in range(1, rank + 1):
            dims = [s[-j] for s in shapes if len(s) >= j]
            real = [d for d in dims if not self._one(d)]
            if any(d is None for d in real):
                out.append(next((d for d in real if d is not None and not self.num.plainly_number(d)), None))
                continue
            first = real[0] if real else self.num.integer(1)
            for other in real[1:]:
                self._require("broadcast", node, first, other, f"axis {rank - j}")
            out.append(first)
        out.reverse()
        values = [self._in_value(node, k) for k in range(len(node.inputs))]
        value = None
        if node.op in _ARITH and len(values) == 2 and all(v is not None for v in values):
            a, b = values
            if len(a) == 1 or len(b) == 1 or len(a) == len(b):
                n = max(len(a), len(b))
                arith = getattr(self.num, _ARITH[node.op])
                if node.op == "Div" and node.outputs[0].dtype is not None and \
                        np.issubdtype(np.dtype(node.outputs[0].dtype), np.floating):
                    arith = self.num.truediv  # `math.ceil(n / k)` traced through floats: keep the fraction for Ceil
                value = tuple(arith(a[i % len(a)], b[i % len(b)]) for i in range(n))
        self._set(node, tuple(out), value)

    def _op_Equal(self, node: gs.Node) -> None:
        """Elementwise equality of two shape vectors where the sizes decide it: the exporter's `expand(..., -1)`
        writes `Where(Equal(shape, -1), 1, shape)`, and a size is never -1."""
        self._broadcast(node)
        a, b = self._in_value(node, 0), self._in_value(node, 1)
        if a is not None and b is not None and (len(a) == len(b) or 1 in (len(a), len(b))):
            equal = [self.num.equal(a[i % len(a)], b[i % len(b)]) for i in range(max(len(a), len(b)))]
            if all(e is not None for e in equal):
                self._set(node, self._shapes.get(id(node.outputs[0])), tuple(equal))

    def _op_Where(self, node: gs.Node) -> None:
        """The entries of a shape vector chosen by a condition whose entries are known."""
        self._broadcast(node)
        cond, a, b = (self._in_value(node, k) for k in range(3))
        if cond is None or a is None or b is None or not all(self.num.expr(c).is_number for c in cond):
            return
        n = max(len(cond), len(a), len(b))
        if all(len(v) in (1, n) for v in (cond, a, b)):
            value = tuple(a[i % len(a)] if cond[i % len(cond)] else b[i % len(b)] for i in range(n))
            self._set(node, self._shapes.get(id(node.outputs[0])), value)

    def _op_Constant(self, node: gs.Node) -> None:
        self._shapes.pop(id(node.outputs[0]), None)
        self._in_shape_of(node.outputs[0])

    def _op_Cast(self, node: gs.Node) -> None:
        value = self._in_value(node, 0)
        to = node.attrs.get("to")
        if value is not None and to in _INT_TYPES:  # float -> int truncates; sizes are positive, so floor
            value = tuple(self.num.floor(v) for v in value)
        self._set(node, self._in_shape(node, 0), value)

    _op_Identity = _op_Cast

    def _op_Ceil(self, node: gs.Node) -> None:
        value = self._in_value(node, 0)
        self._set(node, self._in_shape(node, 0), None if value is None else tuple(self.num.ceiling(v) for v in value))

    def _op_Floor(self, node: gs.Node) -> None:
        value = self._in_value(node, 0)
        self._set(node, self._in_shape(node, 0), None if value is None else tuple(self.num.floor(v) for v in value))

    def _op_MatMul(self, node: gs.Node) -> None:
        a, b = self._in_shape(node, 0), self._in_shape(node, 1)
        if a is None or b is None or len(a) < 2 or len(b) < 2:
            return
        self._require("matmul", node, a[-1], b[-2], "inner dims")
        batch = _broadcast_dims(self, a[:-2], b[:-2])
        self._set(node, (*batch, a[-2], b[-1]))

    def _op_Gemm(self, node: gs.Node) -> None:
        a, b = self._in_shape(node, 0), self._in_shape(node, 1)
        if a is None or b is None:
            return
        a = a[::-1] if node.attrs.get("transA", 0) else a
        b = b[::-1] if node.attrs.get("transB", 0) else b
        self._require("matmul", node, a[1], b[0], "inner dims")
        self._set(node, (a[0], b[1]))

    def _op_Shape(self, node: gs.Node) -> None:
        shape = self._in_shape(node, 0)
        if shape is None:
            return
        start, end = node.attrs.get("start", 0), node.attrs.get("end", len(shape))
        dims = shape[slice(start, end)]
        self._set(node, (self.num.integer(len(dims)),), dims if all(d is not None for d in dims) else None)

    def _op_Transpose(self, node: gs.Node) -> None:
        shape = self._in_shape(node, 0)
        if shape is None:
            return
        perm = node.attrs.get("perm", list(range(len(shape)))[::-1])
        value = _as_array(self._in_value(node, 0), shape)  # F.pad's pads, reordered by the TorchScript exporter
        self._set(node, tuple(shape[p] for p in perm), None if value is None else tuple(value.transpose(perm).ravel()))

    def _axes(self, node: gs.Node, rank: int) -> list[int] | None:
        axes = self._in_value(node, 1) if len(node.inputs) > 1 else node.attrs.get("axes")
        if axes is None or any(not self.num.expr(a).is_number for a in axes):
            return None
        return sorted(int(a) % rank for a in axes)

    def _op_Unsqueeze(self, node: gs.Node) -> None:
        shape = self._in_shape(node, 0)
        if shape is None:
            return
        axes = self._axes(node, len(shape) + len(self._in_value(node, 1) or node.attrs.get("axes", ())))
        if axes is None:
            return
        out = list(shape)
        for a in axes:
            out.insert(a, self.num.integer(1))
        self._set(node, tuple(out), self._in_value(node, 0))

    def _op_Squeeze(self, node: gs.Node) -> None:
        shape = self._in_shape(node, 0)
        if shape is None:
            return
        axes = self._axes(node, len(shape)) if len(node.inputs) > 1 or "axes" in node.attrs else \
            [j for j, d in enumerate(shape) if self._one(d)]
        if axes is None:
            return
        self._set(node, tuple(d for j, d in enumerate(shape) if j not in axes), self._in_value(node, 0))

    def _reduce(self, node: gs.Node) -> None:
        """ReduceMax & co. (axes as attribute or input, keepdims, noop_with_empty_axes) and ArgMax/ArgMin."""
        shape = self._in_shape(node, 0)
        if shape is None or not shape:
            return
        if node.op in ("ArgMax", "ArgMin"):
            axes = [int(node.attrs.get("axis", 0)) % len(shape)]
        elif (len(node.inputs) > 1 and node.inputs[1].name) or "axes" in node.attrs:
            axes = self._axes(node, len(shape))
        elif node.attrs.get("noop_with_empty_axes", 0):
            axes = []
        else:
            axes = list(range(len(shape)))
        if axes is None:
            return
        if node.attrs.get("keepdims", 1):
            self._set(node, tuple(self.num.integer(1) if j in axes else d for j, d in enumerate(shape)))
        else:
            self._set(node, tuple(d for j, d in enumerate(shape) if j not in axes))

    _op_ArgMax = _op_ArgMin = _reduce
    _op_ReduceMax = _op_ReduceMin = _op_ReduceSum = _op_ReduceMean = _op_ReduceProd = _reduce
    _op_ReduceL1 = _op_ReduceL2 = _op_ReduceLogSum = _op_ReduceLogSumExp = _op_ReduceSumSquare = _reduce

    def _op_Concat(self, node: gs.Node) -> None:
        shapes = [self._in_shape(node, k) for k in range(len(node.inputs))]
        if any(s is None for s in shapes) or not shapes:
            return
        rank = len(shapes[0])
        axis = node.attrs.get("axis", 0) % rank
        out = list(shapes[0])
        for s in shapes[1:]:
            for j in range(rank):
                if j != axis:
                    self._require("concat", node, out[j], s[j], f"axis {j}")
        out[axis] = None if any(s[axis] is None for s in shapes) else self.num.add(*[s[axis] for s in shapes])
        values = [self._in_value(node, k) for k in range(len(node.inputs))]
        value = sum(values, ()) if rank == 1 and all(v is not None for v in values) else None
        self._set(node, tuple(out), value)

    def _op_Gather(self, node: gs.Node) -> None:
        data, idx = self._in_shape(node, 0), self._in_shape(node, 1)
        if data is None or idx is None:
            return
        axis = node.attrs.get("axis", 0) % len(data)
        self._set(node, (*data[:axis], *idx, *data[axis + 1:]), self._gathered(node, data))

    def _gathered(self, node: gs.Node, data: Shape) -> tuple | None:
        values, idx = self._in_value(node, 0), self._in_value(node, 1)
        if values is None or idx is None or len(data) != 1:
            return None
        if not all(self.num.expr(i).is_number for i in idx):
            return None
        return tuple(values[int(i)] for i in idx)

    def _op_Slice(self, node: gs.Node) -> None:
        shape = self._in_shape(node, 0)
        starts, ends = self._in_value(node, 1), self._in_value(node, 2)
        if shape is None or starts is None or ends is None:
            return
        axes = self._in_value(node, 3) or tuple(range(len(starts)))
        steps = self._in_value(node, 4) or (1,) * len(starts)
        out = list(shape)
        for s, e, a, st in zip(starts, ends, axes, steps, strict=False):
            a = int(a) % len(shape)
            out[a] = self._slice_len(node, shape[a], self.num.expr(s), self.num.expr(e), int(st))
        value = _as_array(self._in_value(node, 0), shape)
        if value is not None and all(self.num.expr(x).is_number for x in (*starts, *ends, *axes, *steps)):
            cut = [slice(None)] * len(shape)
            for s, e, a, st in zip(starts, ends, axes, steps, strict=False):
                cut[int(a) % len(shape)] = slice(int(s), int(e), int(st))
            value = tuple(value[tuple(cut)].ravel())
        else:
            value = None
        self._set(node, tuple(out), value)

    def _slice_len(self, node: gs.Node, dim: Expr | None, start: Expr, end: Expr, step: int) -> Expr | None:
        if dim is not None and step != 1 and all(self.num.expr(x).is_number for x in (dim, start, end)):
            return self.num.integer(len(range(*slice(int(start), int(end), step).indices(int(dim)))))
        if dim is None:
            return None
        if step < 0:  # only a whole axis read backwards (`x.flip(1)` written `x[:, ::-k]`) has a known length
            whole = start.is_number and (start == -1 or start >= INT_BIG) and end.is_number and end <= -INT_BIG
            return self.simplify(self.num.floor_div(dim - 1, -step) + 1) if whole else None
        if step != 1:  # `x[:, s::k]`: ceil((end - s) / k) entries, on the sizes where s is inside the axis
            if start.is_number and start >= INT_BIG:
                return self.num.integer(0)
            start = _from_end(self, dim, start) if start.is_number and start < 0 else start
            end = dim if end.is_number and end >= INT_BIG else (
                _from_end(self, dim, end) if end.is_number and end < 0 else self.num.min(dim, end))
            return self.simplify(self.num.floor_div(end - start - 1, step) + 1)  # a strided window's count
        if start.is_number and start < 0:
            start = _from_end(self, dim, start)
        if end.is_number:
            end = dim if end >= INT_BIG else (_from_end(self, dim, end) if end < 0 else self.num.min(dim, end))
        elif dim.is_number and end.is_Symbol and is_table(node.inputs[0]):
            # a table (position ids, a positional encoding) of `dim` rows cut at a length: the model is built for
            # lengths up to `dim`, so on the valid range the slice has exactly that length
            self.bounds.setdefault(end, (int(dim), f"'{node.name}' takes {end} rows of a {int(dim)}-row table"))
        else:
            end = self.num.min(dim, end)
        return self.simplify(end - start)

    def _op_Expand(self, node: gs.Node) -> None:
        shape, target = self._in_shape(node, 0), self._in_value(node, 1)
        if shape is None or target is None:
            return
        self._set(node, _broadcast_dims(self, shape, tuple(self.num.expr(t) for t in target), node))

    def _op_Split(self, node: gs.Node) -> None:
        shape = self._in_shape(node, 0)
        if shape is None:
            return
        axis = node.attrs.get("axis", 0) % len(shape)
        split = self._in_value(node, 1) if len(node.inputs) > 1 else node.attrs.get("split")
        if split is None and shape[axis] is not None:
            split = [shape[axis] / len(node.outputs)] * len(node.outputs)
        if split is None:
            return
        if shape[axis] is not None:
            self._require("split", node, shape[axis], self.num.add(*split), "split sizes")
        for k, size in enumerate(split):
            out = list(shape)
            out[axis] = self.num.expr(size)
            self._set(node, tuple(out), k=k)

    def _conv(self, node: gs.Node) -> None:
        x = self._in_shape(node, 0)
        w = self._in_shape(node, 1) if node.op in ("Conv", "ConvTranspose") else ()  # a pool's kernel: its attribute
        out = window_output(node, x, w, self.num)
        if out is not None:
            self._set(node, out)

    _op_Conv = _conv
    _op_ConvTranspose = _conv
    _op_MaxPool = _conv
    _op_AveragePool = _conv

    def _op_Pad(self, node: gs.Node) -> None:
        shape, pads = self._in_shape(node, 0), self._in_value(node, 1)
        if shape is None or pads is None or len(pads) != 2 * len(shape):
            return
        self._set(node, tuple(None if d is None else d + pads[j] + pads[j + len(shape)] for j, d in enumerate(shape)))


# --- helpers ----------------------------------------------------------------------------------------------------
def _from_end(sizes, dim, index):
    """A negative Slice index counted from the end of an axis of `dim`; one at or past -INT_BIG (INT64_MIN: from
    the start, whatever the length) is 0. dim + INT64_MIN made a 4-entry vector's slice 2**63 - 2 long."""
    return sizes.num.integer(0) if index <= -INT_BIG else dim + index


def _as_array(value: tuple | None, shape: Shape | None) -> np.ndarray | None:
    """A tracked value laid out in its shape (an object array of the entries), where every dim is a whole number."""
    if value is None or shape is None or not all(isinstance(d, int) or getattr(d, "is_Integer", False)
                                                 for d in shape):
        return None
    dims = tuple(int(d) for d in shape)
    if int(np.prod(dims, dtype=np.int64)) != len(value):
        return None
    array = np.empty(len(value), dtype=object)
    array[:] = list(value)
    return array.reshape(dims)


_INT_TYPES = {2, 3, 4, 5, 6, 7, 12, 13}  # onnx TensorProto integer types
_ARITH = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "floordiv", "Mod": "mod", "Max": "max", "Min": "min"}


def _broadcast_dims(sizes: OpShapes, a: Shape, b: Shape, node: gs.Node | None = None) -> Shape:
    """Numpy broadcasting of two shapes; with a `node`, a mismatch is recorded as its constraint."""
    rank, one = max(len(a), len(b)), sizes.num.integer(1)
    a = (one,) * (rank - len(a)) + tuple(a)  # a missing dim broadcasts like 1 (where both are 1, it is the output's)
    b = (one,) * (rank - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b, strict=True):
        if x is None or y is None:  # valid broadcasting makes the unknown dim 1 or the known one
            known = y if x is None else x
            out.append(known if known is not None and not sizes._one(known) else None)
            continue
        if sizes._one(x):
            out.append(y)
        elif sizes._one(y) or x == y:
            out.append(x)
        else:
            if node is not None:
                sizes._require("broadcast", node, x, y)
            out.append(x)
    return tuple(out)


def weight_dims(graph: gs.Graph) -> frozenset[int]:
    """The dims of the graph's weights (rank 2 or more): feature widths, and the rows of its tables."""
    return frozenset(d for t in graph.tensors().values() if isinstance(t, gs.Constant) and len(t.shape) >= 2
                     for d in t.shape)


def is_table(tensor: gs.Tensor) -> bool:
    """A weight or buffer: an initializer or a Constant node's output."""
    return isinstance(tensor, gs.Constant) or (bool(tensor.inputs) and tensor.inputs[0].op == "Constant")


def _present(tensor: gs.Tensor) -> bool:
    return bool(tensor.name) or isinstance(tensor, gs.Constant)
