"""Small helpers for rules that read or rebuild shape vectors: constant evaluation of shape arithmetic and
builders of `Shape(x)[i]` subgraphs.

Exporters often leave the shape input of a Reshape or Expand as a little chain of constant-only nodes
(`ConstantOfShape → Mul → Equal → Where` for `expand(n, -1)`). `ConstEval` folds such chains with numpy,
memoised per tensor, so a rule sees the value without running onnxruntime or mutating the graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphfix.context import RuleContext

MAX_ELEMENTS = 4096  # shape vectors are small; anything bigger is data, not worth folding here
MAX_DEPTH = 64
BROADCAST_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "Where", "Equal", "Less", "LessOrEqual", "Greater",
                 "GreaterOrEqual", "And", "Or", "Xor", "Max", "Min", "Mod", "PRelu", "BitShift"}


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
    value = _attr(node, "value")
    fill = np.asarray(value.values if isinstance(value, gs.Constant) else (value if value is not None else 0.0))
    fill = fill.reshape(-1)[0] if fill.size else np.float32(0)
    return np.full([int(d) for d in v[0].reshape(-1)], fill, dtype=np.asarray(fill).dtype)


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


class ConstEval:
    """Values of tensors computed from constants only, through the small ops shape code uses."""

    def __init__(self, leaf: Callable[[gs.Tensor], np.ndarray | None]):
        self._leaf = leaf
        self._memo: dict[int, np.ndarray | None] = {}

    def __call__(self, tensor: gs.Tensor, depth: int = 0) -> np.ndarray | None:
        key = id(tensor)
        if key not in self._memo:
            self._memo[key] = self._compute(tensor, depth)
        return self._memo[key]

    def _compute(self, tensor: gs.Tensor, depth: int) -> np.ndarray | None:
        value = self._leaf(tensor)
        if value is not None:
            return value if value.size <= MAX_ELEMENTS else None
        node = tensor.inputs[0] if tensor.inputs else None
        if node is None or node.op not in _OPS or depth > MAX_DEPTH or len(node.outputs) != 1:
            return None
        inputs = [self(t, depth + 1) for t in node.inputs if t.name or isinstance(t, gs.Constant)]
        if any(v is None for v in inputs):
            return None
        try:
            out = np.asarray(_OPS[node.op](node, inputs))
        except Exception:  # an op variant this folder does not know: treat the value as unknown
            return None
        return out if out.size <= MAX_ELEMENTS else None


def int64(values: Sequence[int] | np.ndarray, name: str) -> gs.Constant:
    return gs.Constant(name, np.asarray(values, dtype=np.int64).reshape(-1))


def shape_dim(graph: gs.Graph, tensor: gs.Tensor, axis: int, opset: int, prefix: str) -> gs.Variable:
    """A 1-D int64 tensor [tensor.shape[axis]] computed at run time, appended to `graph.nodes`."""
    out = gs.Variable(f"{prefix}_dim{axis}", dtype=np.int64, shape=[1])
    if opset >= 15:
        graph.nodes.append(gs.Node("Shape", f"{prefix}_Shape{axis}", {"start": axis, "end": axis + 1},
                                   inputs=[tensor], outputs=[out]))
        return out
    full = gs.Variable(f"{prefix}_shape", dtype=np.int64)
    graph.nodes.append(gs.Node("Shape", f"{prefix}_Shape{axis}", inputs=[tensor], outputs=[full]))
    graph.nodes.append(gs.Node("Gather", f"{prefix}_Gather{axis}", {"axis": 0},
                               inputs=[full, int64([axis], f"{prefix}_axis{axis}")], outputs=[out]))
    return out


def shape_vector(graph: gs.Graph, entries: Sequence[int | tuple[gs.Tensor, int]], opset: int,
                 prefix: str) -> gs.Tensor:
    """A 1-D int64 shape vector: ints stay constants, (tensor, axis) entries become Shape(tensor)[axis]."""
    if all(isinstance(e, int | np.integer) for e in entries):
        return int64(list(entries), f"{prefix}_value")
    pieces: list[gs.Tensor] = []
    run: list[int] = []
    for entry in entries:
        if isinstance(entry, int | np.integer):
            run.append(int(entry))
            continue
        if run:
            pieces.append(int64(run, f"{prefix}_part{len(pieces)}"))
            run = []
        pieces.append(shape_dim(graph, entry[0], entry[1], opset, f"{prefix}_{len(pieces)}"))
    if run:
        pieces.append(int64(run, f"{prefix}_part{len(pieces)}"))
    if len(pieces) == 1:
        return pieces[0]
    out = gs.Variable(f"{prefix}_shape_vector", dtype=np.int64, shape=[len(entries)])
    graph.nodes.append(gs.Node("Concat", f"{prefix}_Concat", {"axis": 0}, inputs=pieces, outputs=[out]))
    return out


# --- export-time sizes of dynamic dims ---------------------------------------------------------------
@dataclass
class ExportSizes:
    """Export-time values of dynamic dims (by dim name) and where each value was learnt.

    The expensive sources (onnxruntime's symbolic inference) are deferred until a candidate first reads
    `values`: a graph with nothing that could be baked never pays for them."""

    _values: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    carriers: dict[str, tuple[gs.Tensor, int]] = field(default_factory=dict)  # dim name -> (graph input, axis)
    deferred: list[Callable[[ExportSizes], None]] = field(default_factory=list)

    @property
    def values(self) -> dict[str, int]:
        while self.deferred:
            self.deferred.pop(0)(self)
        return self._values

    def learn(self, sym: str, value: int, source: str) -> None:
        if sym not in self._values and value > 0:
            self._values[sym], self.sources[sym] = int(value), source

    def symbols_with(self, value: int) -> list[str]:
        return [s for s, v in self.values.items() if v == value]

    def explain(self, sym: str) -> str:
        return f"{sym}={self.values[sym]} at export ({self.sources[sym]})"


def export_sizes(ctx: RuleContext, ev: ConstEval) -> ExportSizes:
    """Export-time sizes of the graph inputs' dynamic dims, from --trace-shape or the evidence in the graph."""
    sizes = ExportSizes()
    for tensor in ctx.graph.inputs:
        for axis, dim in enumerate(ctx.shape(tensor) or ()):
            if isinstance(dim, str):
                sizes.carriers.setdefault(dim, (tensor, axis))
        traced = ctx.options.trace_shapes.get(tensor.name)
        for axis, dim in enumerate(ctx.shape(tensor) or ()):
            if traced and isinstance(dim, str) and axis < len(traced):
                sizes.learn(dim, traced[axis], f"--trace-shape {tensor.name}")
    reshapes = []
    for node in ctx.graph.nodes:
        if node.op == "Reshape":
            reshapes.append(node)
        elif node.op == "Expand":
            _learn_aligned(sizes, ctx.shape(node.inputs[0]), ev(node.inputs[1]), f"Expand '{node.name}'")
        elif node.op == "Split" and (split := split_sizes(ev, node)) is not None:
            shape = ctx.shape(node.inputs[0])
            if shape and isinstance(dim := shape[int(node.attrs.get("axis", 0)) % len(shape)], str):
                sizes.learn(dim, sum(split), f"Split '{node.name}' sizes")
        elif node.op in BROADCAST_OPS:
            shapes = [ctx.shape(t) for t in node.inputs]
            for shape in shapes:
                for other in shapes:
                    if shape is not other and shape and other:
                        _learn_aligned(sizes, shape, np.asarray([d if isinstance(d, int) else 1 for d in other]),
                                       f"{node.op} '{node.name}' broadcasts it with a fixed size")
    sizes.deferred.append(lambda s: _learn_from_symbolic(ctx, s))
    sizes.deferred.append(lambda s: _learn_from_reshapes(ctx, ev, s, reshapes))
    return sizes


def _learn_from_reshapes(ctx: RuleContext, ev: ConstEval, sizes: ExportSizes, reshapes: list[gs.Node]) -> None:
    """A Reshape whose element count is conserved at one size only: that size is the export size."""
    for node in reshapes:
        shape, target = ctx.shape(node.inputs[0]), ev(node.inputs[1])
        if shape is None or target is None or (target <= 0).any():
            continue
        unknown = [d for d in shape if not isinstance(d, int) and d not in sizes._values]
        if len(unknown) == 1 and isinstance(unknown[0], str) and shape.count(unknown[0]) == 1:
            known = math.prod(d if isinstance(d, int) else sizes._values[d] for d in shape if d != unknown[0])
            if known and int(np.prod(target)) % known == 0:
                sizes.learn(unknown[0], int(np.prod(target)) // known,
                            f"Reshape '{node.name}' conserves elements only there")


def _learn_aligned(sizes: ExportSizes, shape, target, source: str) -> None:
    if shape is None or target is None:
        return
    target = target.reshape(-1)
    for j in range(1, min(len(shape), len(target)) + 1):
        dim, t = shape[-j], int(target[-j])
        if isinstance(dim, str) and t > 1:
            sizes.learn(dim, t, source)


def _learn_from_symbolic(ctx: RuleContext, sizes: ExportSizes) -> None:
    """onnxruntime's symbolic inference merges a dynamic input dim with a constant it meets: that is the size."""
    dims = [d for t in ctx.graph.inputs for d in (ctx.shape(t) or ())]
    if not any(isinstance(d, str) and d not in sizes._values for d in dims):
        return  # every dynamic dim is already known
    symbolic = ctx.symbolic_shapes
    for tensor in ctx.graph.inputs:
        merged = symbolic.get(tensor.name) or []
        for dim, value in zip(ctx.shape(tensor) or (), merged, strict=False):
            if isinstance(dim, str) and isinstance(value, int):
                sizes.learn(dim, value, "symbolic shape inference merges it with a constant")


def split_sizes(ev: ConstEval, node: gs.Node) -> list[int] | None:
    if len(node.inputs) > 1 and (node.inputs[1].name or isinstance(node.inputs[1], gs.Constant)):
        value = ev(node.inputs[1])
        return None if value is None else [int(v) for v in value.reshape(-1)]
    split = node.attrs.get("split")
    return None if split is None else [int(v) for v in split]


def regroups_static_trailing_dims(shape: list, target: list[int], j: int) -> bool:
    """True when target[j] belongs to a suffix of the target that only regroups the input's static trailing
    dims: [B, T, 32] -> [-1, 32] or [-1, 4, 8] (head split). Those entries are model sizes, not traced ones."""
    static_products = set()
    product = 1
    for dim in reversed(shape):
        if not isinstance(dim, int):
            break
        product *= dim
        static_products.add(product)
    product = 1
    for k in range(len(target) - 1, -1, -1):
        if target[k] <= 0:
            return False
        product *= target[k]
        if k <= j and product in static_products:
            return True
    return False
