"""The one evaluator of small tensors that rules read: constant folding and symbolic shape vectors.

`Evaluator.value(t)` folds tensors computed from constants only, with numpy, through the small ops shape code
uses (`ConstantOfShape → Mul → Equal → Where` for `expand(n, -1)`): the value, or None.

`Evaluator.elems(t)` evaluates 0-d/1-d integer tensors (shape arithmetic: Shape, Gather, Slice, Concat, OneHot,
...) element by element. An element is an `int`, or a `Sym`: a tensor's dynamic dimension (`Sym("dim", t, j)`)
or an element of a tensor that cannot be folded (`Sym("val", t, i)`). Folded constants are its leaves, so the two
views always agree.

Both are memoised per tensor and bounded in depth, so a rule that evaluates a few vectors per candidate stays
linear in graph size. One evaluator serves one graph state (`RuleContext.evaluator`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphfix.io.sources import known_values

MAX_ELEMENTS = 4096  # shape vectors are small; anything bigger is data, not worth folding here
MAX_DEPTH = 64
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


def show_elems(elems: list) -> str:
    """'[x[0], 4, y.size(1)]'-style text of a shape vector's elements."""
    return "[" + ", ".join(f"{e.tensor.name}[{e.index}]" if isinstance(e, Sym) else str(e) for e in elems) + "]"



def _attr(node: gs.Node, name: str, default=None):
    return node.attrs.get(name, default)


def _axes(node: gs.Node, inputs: list[np.ndarray], index: int) -> list[int] | None:
    if len(inputs) > index:
        return [int(a) for a in inputs[index].reshape(-1)]
    axes = _attr(node, "axes")
    return None if axes is None else [int(a) for a in axes]


def _unsqueeze(node: gs.Node, v: list[np.ndarray]) -> np.ndarray:
    out = v[0]
    axes = sorted(a % (out.ndim + len(_axes(node, v, 1))) for a in _axes(node, v, 1))
    for a in axes:
        out = np.expand_dims(out, a)
    return out


def _squeeze(node: gs.Node, v: list[np.ndarray]) -> np.ndarray:
    axes = _axes(node, v, 1)
    return np.squeeze(v[0]) if axes is None else np.squeeze(v[0], axis=tuple(axes))


def _slice(node: gs.Node, v: list[np.ndarray]) -> np.ndarray:
    data, starts, ends = v[0], v[1].reshape(-1), v[2].reshape(-1)
    axes = v[3].reshape(-1) if len(v) > 3 else np.arange(len(starts))
    steps = v[4].reshape(-1) if len(v) > 4 else np.ones(len(starts), dtype=np.int64)
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        index[int(a)] = slice(int(s), int(e), int(st))
    return data[tuple(index)]


def _div(node: gs.Node, v: list[np.ndarray]) -> np.ndarray:
    if np.issubdtype(v[0].dtype, np.integer):
        return (np.trunc(v[0] / v[1])).astype(v[0].dtype)
    return v[0] / v[1]


def _const_of_shape(node: gs.Node, v: list[np.ndarray]) -> np.ndarray:
    fill = known_values(_attr(node, "value")) if _attr(node, "value") is not None else np.float32(0)
    if fill is None:
        raise ValueError("the fill value is kept in external data")
    fill = fill.reshape(-1)[0] if fill.size else np.float32(0)
    return np.full([int(d) for d in v[0].reshape(-1)], fill, dtype=np.asarray(fill).dtype)


def _elements_out(node: gs.Node, v: list[np.ndarray]) -> int | None:
    """How many elements folding `node` makes, where that is not bounded by its inputs' (a ConstantOfShape's
    shape, a broadcast of several vectors, a gather of rows): checked before anything is allocated."""
    if node.op == "ConstantOfShape":
        dims = [int(d) for d in v[0].reshape(-1)]
        return None if any(d < 0 for d in dims) else math.prod(dims)
    if node.op in ("Add", "Sub", "Mul", "Div", "Equal", "Where"):
        try:
            return math.prod(np.broadcast_shapes(*(a.shape for a in v)))
        except ValueError:
            return None
    if node.op == "Gather":
        return v[1].size * (v[0].size // max(v[0].shape[int(_attr(node, "axis", 0))], 1)) if v[0].ndim else None
    return 0


_OPS: dict[str, Callable[[gs.Node, list[np.ndarray]], np.ndarray]] = {
    "Identity": lambda n, v: v[0],
    "Add": lambda n, v: v[0] + v[1],
    "Sub": lambda n, v: v[0] - v[1],
    "Mul": lambda n, v: v[0] * v[1],
    "Div": _div,
    "Neg": lambda n, v: -v[0],
    "Equal": lambda n, v: np.equal(v[0], v[1]),
    "Where": lambda n, v: np.where(v[0], v[1], v[2]),
    "Concat": lambda n, v: np.concatenate(v, axis=int(_attr(n, "axis", 0))),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Reshape": lambda n, v: v[0].reshape([int(d) for d in v[1]]),
    "Cast": lambda n, v: v[0].astype(onnx.helper.tensor_dtype_to_np_dtype(_attr(n, "to"))),
    "Slice": _slice,
    "Gather": lambda n, v: np.take(v[0], v[1], axis=int(_attr(n, "axis", 0))),
    "Transpose": lambda n, v: np.transpose(v[0], _attr(n, "perm")),
    "ConstantOfShape": _const_of_shape,
}



class Evaluator:
    """Folds constants (`value`) and evaluates shape vectors (`elems`) of one graph state (module docstring)."""

    def __init__(self, constant_value: Callable[[gs.Tensor], np.ndarray | None],
                 shape_of: Callable[[gs.Tensor], list | None]):
        self.constant_value = constant_value
        self._shape_of = shape_of
        self._memo: dict[int, tuple[list[Elem], bool] | None] = {}
        self._values: dict[int, np.ndarray | None] = {}

    # --- constant folding -------------------------------------------------------------------------------
    def value(self, tensor: gs.Tensor, depth: int = 0) -> np.ndarray | None:
        """The tensor's value when it is computed from constants only (and small), else None."""
        key = id(tensor)
        if key not in self._values:
            self._values[key] = self._fold(tensor, depth)
        return self._values[key]

    __call__ = value

    def _fold(self, tensor: gs.Tensor, depth: int) -> np.ndarray | None:
        value = self.constant_value(tensor)
        if value is not None:  # sizes are numbers: a string or object tensor is never one (a hostile model's)
            return value if value.size <= MAX_ELEMENTS and value.dtype.kind in "biuf" else None
        node = tensor.inputs[0] if tensor.inputs else None
        if node is None or node.op not in _OPS or depth > MAX_DEPTH or len(node.outputs) != 1:
            return None
        inputs = [self.value(t, depth + 1) for t in node.inputs if t.name or isinstance(t, gs.Constant)]
        if any(v is None for v in inputs):
            return None
        try:
            made = _elements_out(node, inputs)
            if made is None or made > MAX_ELEMENTS:
                return None  # too large to be a shape vector: never allocated
            out = np.asarray(_OPS[node.op](node, inputs))
        except Exception:  # an op variant this folder does not know: treat the value as unknown
            return None
        return out if out.size <= MAX_ELEMENTS else None

    # --- shape vectors ----------------------------------------------------------------------------------
    def shape_of(self, tensor: gs.Tensor) -> list | None:
        """The shape rules see, plus: a piece of a unit SplitToSequence of a 1-D tensor is a 1-element vector."""
        node = tensor.inputs[0] if tensor.inputs else None
        if node is not None and node.op == "SequenceAt":
            maker = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
            if maker is not None and maker.op == "SplitToSequence" and maker.attrs.get("axis", 0) == 0 \
                    and len(self._shape_of(maker.inputs[0]) or ()) == 1:
                return [1]
        return self._shape_of(tensor)

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
        value = self.value(tensor)
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
            if len(data) != 1 or not isinstance(data[0], int) or data[0] > 4096:
                return None
            fill = known_values(attrs["value"]) if attrs.get("value") is not None else np.zeros(1)
            if fill is None or not fill.size:
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


def arange_axis(value: np.ndarray, axes: list[int]) -> tuple[float, float, int] | None:
    """(start, step, axis) when `value` is an arithmetic progression along one axis and size 1 elsewhere."""
    if len(axes) != 1 or value.size != value.shape[axes[0]] or value.size < 2:
        return None
    flat = value.reshape(-1).astype(np.float64)
    step = flat[1] - flat[0]
    if not np.allclose(flat, flat[0] + step * np.arange(flat.size)):
        return None
    return float(flat[0]), float(step), axes[0]
