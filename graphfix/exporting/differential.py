"""A second trace settles what one graph cannot: which constants follow the input's size.

The TorchScript exporter writes every size that went through Python (`math.ceil(h / 2)`, `int(h) // 4`) as a
constant. From one graph, MobileViT's unfold `reshape(B*C*4, 2, 6, 2)` is as much "the patch counts grow" as "the
patch size grows" (tests/frontends/test_patch_grid_ambiguity.py: both designs leave the same graph). The export
companion has the module: traced again with one dynamic dim doubled at a time, the graph keeps its ops, and the
constants that moved say which sizes they follow. Each moved entry is fitted as `k * d1^e1 * d2^e2 ...` of the
input dims (each exponent from the ratio its doubling gave, k a fraction) and computed at run time from `Shape`
ops. `graphfix.export` keeps the result only where the module matches it at sizes no trace used.

    moved = moved_constants(base, traces, sizes)       # traces: dim name -> the export with it doubled
    model = computed(base, moved, dynamic_dims(base))  # or why not, a str
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import onnx
from onnx import helper, numpy_helper

Dim = str  # a dynamic dim, by the name the export gave it
MAX_EXPONENT = 2  # an entry follows a dim, or its square (a flattened T x T): more is not a size


@dataclass(frozen=True)
class Fitted:
    """Entry `index` (flat) of a constant: `k * prod(dim ** exponent)`."""

    index: int
    k: Fraction
    exponents: dict[Dim, int]

    def at(self, sizes: dict[Dim, int]) -> Fraction:
        return self.k * math.prod(sizes[d] ** e for d, e in self.exponents.items())


@dataclass(frozen=True)
class Moved:
    """The Constant node at `position` (in node order) and its entries that follow the sizes."""

    position: int
    entries: tuple[Fitted, ...]


def moved_constants(base: onnx.ModelProto, traces: dict[Dim, onnx.ModelProto],
                    sizes: dict[Dim, int]) -> list[Moved] | str:
    """The integer constants of `base` (traced at `sizes`, each dim by name) whose entries differ in `traces` (each
    traced with that one dim doubled), fitted; or why the traces do not settle it (the graph changes with the size,
    a constant changes shape, an entry follows no product of the sizes)."""
    ops = [n.op_type for n in base.graph.node]
    for dim, trace in traces.items():
        if [n.op_type for n in trace.graph.node] != ops:
            return f"the graph traced with {dim} doubled has other ops: a branch on the size"
    moved = []
    for position, node in enumerate(base.graph.node):
        if node.op_type != "Constant":
            continue
        value = _value(node)
        others = {dim: _value(trace.graph.node[position]) for dim, trace in traces.items()}
        if value is None or all(o is not None and o.shape == value.shape and np.array_equal(o, value)
                                for o in others.values()):
            continue
        if any(o is None or o.shape != value.shape for o in others.values()):
            return f"constant '{node.output[0]}' changes its shape with the size (a table or a mask, not a size)"
        if not np.issubdtype(value.dtype, np.integer):
            return f"constant '{node.output[0]}' ({value.dtype}) moves with the size: not an integer size"
        entries = []
        for index in map(int, np.flatnonzero(np.stack([o != value for o in others.values()]).any(axis=0))):
            fitted = _fit(index, int(value.flat[index]), {d: int(o.flat[index]) for d, o in others.items()}, sizes)
            if isinstance(fitted, str):
                return f"entry {index} of constant '{node.output[0]}' {fitted}"
            entries.append(fitted)
        moved.append(Moved(position, tuple(entries)))
    return moved


def _value(node: onnx.NodeProto) -> np.ndarray | None:
    attribute = next((a for a in node.attribute if a.name == "value"), None)
    return None if attribute is None else numpy_helper.to_array(attribute.t)


def _fit(index: int, value: int, doubled: dict[Dim, int], sizes: dict[Dim, int]) -> Fitted | str:
    """`value` as `k * prod(d ** e)`: each exponent from the ratio the doubling of its dim gave (1, 2 or 4)."""
    if value == 0:
        return "is 0 at the export size: no ratio to read"
    exponents = {}
    for dim, other in doubled.items():
        ratio = Fraction(other, value)
        exponent = next((e for e in range(MAX_EXPONENT + 1) if ratio == 2 ** e), None)
        if exponent is None:
            return f"goes from {value} to {other} when a dim doubles: not a product of the sizes"
        if exponent:
            exponents[dim] = exponent
    k = Fraction(value) / math.prod(sizes[d] ** e for d, e in exponents.items())
    return Fitted(index, k, exponents)


def dynamic_dims(model: onnx.ModelProto) -> dict[Dim, tuple[str, int]]:
    """Each named dim of the graph inputs, with the first input and axis that carries it."""
    found: dict[Dim, tuple[str, int]] = {}
    for value in model.graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param:
                found.setdefault(dim.dim_param, (value.name, axis))
    return found


def computed(base: onnx.ModelProto, moved: list[Moved], carriers: dict[Dim, tuple[str, int]]) -> onnx.ModelProto:
    """`base` with each moved constant computed at run time from `Shape` of the graph inputs (`carriers`: each
    dim's input and axis), the entries that stay as they were; the same output names, so every reader follows."""
    model = onnx.ModelProto()
    model.CopyFrom(base)
    graph = model.graph
    replaced = {m.position: m for m in moved}
    nodes: list[onnx.NodeProto] = []
    for position, node in enumerate(base.graph.node):
        if position not in replaced:
            nodes.append(node)
            continue
        value = _value(node)
        out = node.output[0]
        pieces = [_entry(nodes, graph, f"{out}_gf_e{i}", fitted, carriers) if (fitted := _fitted(replaced[position], i))
                  else _const(graph, f"{out}_gf_c{i}", [int(v)]) for i, v in enumerate(value.flat)]
        flat = f"{out}_gf_flat"
        nodes.append(helper.make_node("Concat", pieces, [flat], axis=0, name=f"{out}_gf_concat"))
        shaped = f"{out}_gf_shaped" if value.dtype != np.int64 else out
        nodes.append(helper.make_node("Reshape", [flat, _const(graph, f"{out}_gf_shape", list(value.shape))],
                                      [shaped], name=f"{out}_gf_reshape"))
        if shaped != out:
            nodes.append(helper.make_node("Cast", [shaped], [out], name=f"{out}_gf_cast",
                                          to=helper.np_dtype_to_tensor_dtype(value.dtype)))
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _fitted(moved: Moved, index: int) -> Fitted | None:
    return next((e for e in moved.entries if e.index == index), None)


def _entry(nodes: list, graph: onnx.GraphProto, name: str, fitted: Fitted,
           carriers: dict[Dim, tuple[str, int]]) -> str:
    """Nodes computing `fitted` as a 1-element int64 vector; its name. Floor division by k's denominator: exact
    wherever the module runs at the sizes the fit came from (the module check says so)."""
    factors = []
    for index, (dim, exponent) in enumerate(sorted(fitted.exponents.items())):
        source, axis = carriers[dim]
        shape, size = f"{name}_s{index}", f"{name}_d{index}"
        nodes.append(helper.make_node("Shape", [source], [shape], name=shape))
        nodes.append(helper.make_node("Gather", [shape, _const(graph, f"{size}_axis", [axis])], [size], name=size))
        factors += [size] * exponent
    current = _const(graph, f"{name}_k", [fitted.k.numerator])
    for i, factor in enumerate(factors):
        nodes.append(helper.make_node("Mul", [current, factor], [f"{name}_m{i}"], name=f"{name}_m{i}"))
        current = f"{name}_m{i}"
    if fitted.k.denominator != 1:
        nodes.append(helper.make_node("Div", [current, _const(graph, f"{name}_den", [fitted.k.denominator])],
                                      [f"{name}_div"], name=f"{name}_div"))
        current = f"{name}_div"
    return current


def _const(graph: onnx.GraphProto, name: str, values: list[int]) -> str:
    graph.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
    return name
