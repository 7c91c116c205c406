"""Graph edits that replace a baked shape value or constant with one computed at run time (fixes of GF004/GF006).

Each function returns a closure `apply(graph)` for a `Fix`; the engine runs clean-up and toposort afterwards.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs

from graphfix.analysis.builders import Builder, onnx_type
from graphfix.analysis.sizes import Sizes
from graphfix.core.lazy import sympy  # imported on first use: see graphfix.core.lazy


def replace_input(node: gs.Node, index: int, entries, opset: int, scalar: bool = False, like=None):
    def apply(graph: gs.Graph) -> None:
        b = Builder(graph, f"{node.name}_gf004", opset)
        vector = b.vector(entries)
        node.inputs[index] = b.scalar(vector, like.dtype) if scalar else vector

    return apply


def loosened(node: gs.Node, values: set[int], apply, products: set[int] = frozenset()) -> Loosened:
    """Run `apply`, then forget the baked sizes in the static shapes of graph outputs the node feeds. `products`:
    those of `values` that are products of several sizes (a grid's H * W), whose factors are baked too."""
    return Loosened(node, frozenset(values), apply, frozenset(products))


class Loosened:
    """An edit that makes sizes follow the input: run `apply`, then forget the baked sizes (`values`) in the static
    shapes of graph outputs the node feeds. `values` stay readable: a float constant that echoes one of them
    elsewhere in the graph doubts the fix (graphfix.analysis.echoes)."""

    def __init__(self, node: gs.Node, values: frozenset[int], apply, products: frozenset[int] = frozenset()):
        self.node, self.values, self.apply, self.products = node, values, apply, products

    def __call__(self, graph: gs.Graph) -> None:
        self.apply(graph)
        outputs = {id(t) for t in graph.outputs}
        queue, seen = list(self.node.outputs), set()
        while queue:
            tensor = queue.pop()
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            if id(tensor) in outputs and tensor.shape is not None:
                tensor.shape = [None if isinstance(d, int) and d in self.values else d for d in tensor.shape]
            queue.extend(out for consumer in tensor.outputs for out in consumer.outputs)


def in_turn(edits):
    """One edit that applies `edits` in turn."""
    edits = list(edits)

    def apply(graph: gs.Graph) -> None:
        for edit in edits:
            edit(graph)

    return apply


def set_constant(node: gs.Node, index: int, value: np.ndarray):
    def apply(graph: gs.Graph) -> None:
        node.inputs[index] = gs.Constant(f"{node.name}_gf004_const{index}", np.ascontiguousarray(value))

    return apply


def arange_input(node: gs.Node, index: int, value: np.ndarray, axis: int, other: gs.Tensor, source: int,
                 opset: int):
    """Replace a constant arange along `axis` by Range(0, other.shape[source]), cast and shaped like `value`."""

    def apply(graph: gs.Graph) -> None:
        b = Builder(graph, f"{node.name}_gf004_arange", opset)
        limit = b.op("Squeeze", [b.dim(other, source)])
        positions = b.op("Range", [b.const(0), limit, b.const(1)])
        cast = b.op("Cast", [positions], {"to": onnx_type(value.dtype)}, dtype=value.dtype)
        dims = [1] * value.ndim
        dims[axis] = -1
        node.inputs[index] = b.op("Reshape", [cast, b.const(dims)], dtype=value.dtype)

    return apply


def positions_at_least(source: gs.Tensor, length: int, dtype, dim: tuple[gs.Tensor, int],
                       reshapes: list[tuple[gs.Node, int]], opset: int):
    """Replace a folded arange(0, `length`) by Range(0, max(`length`, dim)) at run time: the positions it held, and
    more where the input is longer; each Reshape on its way (`reshapes`: node, shape entry equal to `length`) takes
    -1 at that entry so that it follows the longer table."""
    def apply(graph: gs.Graph) -> None:
        b = Builder(graph, f"{source.name}_gf006_positions", opset)
        limit = b.op("Squeeze", [b.op("Max", [b.const([length]), b.dim(*dim)])])
        positions = b.op("Cast", [b.op("Range", [b.const(0), limit, b.const(1)])],
                         {"to": onnx_type(dtype)}, dtype=dtype)
        for consumer in list(source.outputs):
            for i, tensor in enumerate(list(consumer.inputs)):
                if tensor is source:
                    consumer.inputs[i] = positions
        for node, entry in reshapes:
            shape = node.inputs[1]
            pieces = [b.op("Slice", [shape, b.const([0]), b.const([entry])])] if entry else []
            pieces.append(b.const([-1]))
            pieces.append(b.op("Slice", [shape, b.const([entry + 1]), b.const([2 ** 62])]))
            node.inputs[1] = b.op("Concat", pieces, {"axis": 0})

    return apply


def sinusoid_input(node: gs.Node, index: int, value: np.ndarray, table, other: gs.Tensor, source: int, opset: int,
                   at_least: int = 0):
    """Replace a constant sinusoidal table (a `sinusoids.Sinusoid`) by the same formula over Range(0,
    other.shape[source]), or Range(0, max(at_least, other.shape[source])): sin or cos of the positions times each
    column's frequency, shaped like `value`."""

    def apply(graph: gs.Graph) -> None:
        b = Builder(graph, f"{node.name}_gf006_sinusoid", opset)
        length = b.dim(other, source)
        limit = b.op("Squeeze", [b.op("Max", [b.const([at_least]), length]) if at_least else length])
        real = table.precision  # float32, as most libraries compute; float64 where the table was computed so
        positions = b.op("Cast", [b.op("Range", [b.const(0), limit, b.const(1)])], {"to": onnx_type(real)},
                         dtype=real)
        angles = b.op("Mul", [b.unsqueeze(positions, 1, dtype=real), b.const(table.omega[None, :].astype(real), real)],
                      dtype=real)
        both = b.op("Where", [b.const(table.cosine[None, :], np.bool_), b.op("Cos", [angles], dtype=real),
                              b.op("Sin", [angles], dtype=real)], dtype=real)
        if value.dtype != real:
            both = b.op("Cast", [both], {"to": onnx_type(value.dtype)}, dtype=value.dtype)
        dims = [int(d) for d in value.shape]
        dims[table.axis] = -1
        node.inputs[index] = b.op("Reshape", [both, b.const(dims)], dtype=value.dtype)

    return apply


def rebuilt_entries(node: gs.Node, index: int, replace: dict[int, sympy.Expr], sizes: Sizes, opset: int,
                    near: dict[int, gs.Tensor] | None = None):
    """Fix closure: the entries `replace` names of the shape vector `node.inputs[index]` become run-time
    expressions (Shape ops on the nearest tensor carrying each size upstream of `near`'s tensor for that entry,
    else of the node's data); the other entries are kept as slices of the original vector, so partially constant
    `Concat`-built shapes keep their computed parts."""
    vector = node.inputs[index]
    length = len(sizes.value(vector))
    near = {j: (near or {}).get(j) or node.inputs[0] for j in replace}

    def apply(graph: gs.Graph) -> None:
        b = Builder(graph, f"{node.name}_gf004", opset)
        pieces, start = [], 0
        for j in sorted(replace):
            if j > start:
                pieces.append(b.op("Slice", [vector, b.const([start]), b.const([j])]))
            pieces.append(size_expr(b, sizes, replace[j], near[j]))
            start = j + 1
        if start < length:
            pieces.append(b.op("Slice", [vector, b.const([start]), b.const([length])]))
        node.inputs[index] = pieces[0] if len(pieces) == 1 else b.op("Concat", pieces, {"axis": 0})

    return apply


def size_expr(b: Builder | None, sizes: Sizes, expr: sympy.Expr, near: gs.Tensor) -> gs.Tensor | bool | None:
    """A 1-element int64 vector computing `expr` at run time, from Shape ops on the nearest tensor upstream of
    `near` that carries each size; None when `expr` is not a sum/product/floor-division/modulo of carried sizes.
    With `b=None` it only answers whether it can (True or None)."""
    found = sizes.carrier(expr, near)
    if found is not None:
        return True if b is None else b.dim(*found)
    if expr.is_Integer:
        return True if b is None else b.const([int(expr)])
    if expr.is_Add or expr.is_Mul:
        parts = [size_expr(b, sizes, arg, near) for arg in expr.args]
        if any(p is None for p in parts) or b is None:
            return None if any(p is None for p in parts) else True
        out = parts[0]
        for part in parts[1:]:
            out = b.op("Add" if expr.is_Add else "Mul", [out, part])
        return out
    if isinstance(expr, sympy.Mod) and expr.args[1].is_Integer and expr.args[1] > 0:
        top = size_expr(b, sizes, expr.args[0], near)
        if top is None or b is None:
            return top
        return b.op("Mod", [top, b.const([int(expr.args[1])])])  # fmod=0: the divisor's sign, as sympy's
    if isinstance(expr, sympy.floor):
        num, den = sympy.fraction(sympy.together(expr.args[0]))
        top = size_expr(b, sizes, num, near) if den.is_Integer and den > 0 else None
        if top is None or b is None:
            return top
        return b.op("Div", [top, b.const([int(den)])])
    return None


def band_input(node: gs.Node, index: int, value: np.ndarray, band, entries: list, opset: int):
    """Replace a constant mask (a `structured.Band`) by the same band built at run time: Trilu (two for a band) or
    EyeLike over ConstantOfShape of `entries` (the last two dims: ints or (tensor, axis)), then the mask's two
    values."""

    def apply(graph: gs.Graph) -> None:
        b = Builder(graph, f"{node.name}_gf006_{band.kind}", opset)
        shape = b.vector(entries)
        if band.kind == "eye":
            zeros = b.op("ConstantOfShape", [shape], {"value": _fill(0.0)}, dtype=np.float32)
            ones = b.op("EyeLike", [zeros], {"k": band.k}, dtype=np.float32)
        else:  # Trilu keeps j - i <= k (upper=0) or j - i >= k (upper=1): a band is both
            ones = b.op("ConstantOfShape", [shape], {"value": _fill(1.0)}, dtype=np.float32)
            for k, upper in ((band.hi, 0), (band.lo, 1)):
                if k is not None:
                    ones = b.op("Trilu", [ones, b.const(k)], {"upper": upper}, dtype=np.float32)
        out = b.op("Cast", [ones], {"to": onnx_type(np.bool_)}, dtype=np.bool_)
        if value.dtype == np.bool_ and not band.inside and band.outside:
            out = b.op("Not", [out], dtype=np.bool_)  # onnxruntime has no bool Where: True outside the band
        elif not (value.dtype == np.bool_ and band.inside and not band.outside):
            out = b.op("Where", [out, b.const(band.inside, value.dtype), b.const(band.outside, value.dtype)],
                       dtype=value.dtype)
        for _ in range(value.ndim - 2):
            out = b.unsqueeze(out, 0, dtype=value.dtype)
        node.inputs[index] = out

    return apply


def table_slice_input(node: gs.Node, index: int, table: gs.Tensor, ends: dict[int, tuple[gs.Tensor, int]],
                      opset: int):
    """Replace a constant cut from `table` by Slice(table) ending at run-time sizes: axis -> (tensor, axis)."""

    def apply(graph: gs.Graph) -> None:
        b = Builder(graph, f"{node.name}_gf006_prefix", opset)
        axes = sorted(ends)
        stops = b.vector([ends[a] for a in axes])
        node.inputs[index] = b.op("Slice", [table, b.const([0] * len(axes)), stops, b.const(axes)],
                                  dtype=table.dtype)

    return apply


def _fill(number: float) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.array([number], dtype=np.float32), "value")
