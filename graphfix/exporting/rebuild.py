"""The export with its moving constants computed from the input's shape (refit's last step).

Each fitted number (graphfix.exporting.fit) becomes `Gather(Shape(input), [axis])` of the input that carries its
dim, then `Div` by k (after `Add r`: k - 1 for a ceiling), `Mul` and `Add` by integers. A size vector is the
`Concat` of its numbers; a uniform table is `ConstantOfShape` of its fitted shape with its value; an arange is
`start + step * Range(0, n, 1)` of its element count n, reshaped to its fitted shape; a 'SAME' pad over a size n is
`Mod(n - 1, stride)` taken from the window's reach, at least 0, then halved. The replaced
constants that nothing reads any more are removed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphfix.exporting.fit import Fit
from graphfix.exporting.readings import Reading, Site


def rebuild(model: onnx.ModelProto, chosen: dict[Site, tuple[str, Reading, list[Fit]]],
            dims: dict[str, tuple[str, int, int]]) -> onnx.ModelProto:
    """`model` (changed in place) with each chosen site's input computed from the inputs' shapes: site -> (kind,
    its reading at export, a fit per number); `dims`: dim name -> (graph input, axis, export size)."""
    build, replaced = _Builder(dims), set()
    for (i, j), (kind, reading, fitted) in chosen.items():
        node = model.graph.node[i]
        replaced.add(node.input[j])
        name = f"graphfix_refit_{i}_{j}"
        if kind == "vector":
            node.input[j] = build.cast(build.vector(fitted, reading.shape, name), reading.dtype, name)
        elif reading.family[0] == "uniform":
            node.input[j] = build.uniform(build.vector(fitted, (len(fitted),), name), reading, name)
        else:
            node.input[j] = build.arange(build.vector(fitted, (len(fitted),), name), reading, name)
    read = _read_names(model.graph) | {o.name for o in model.graph.output}
    gone = replaced - read  # the replaced constants no node reads any more
    nodes = build.nodes + [n for n in model.graph.node if not (n.op_type == "Constant" and n.output[0] in gone)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [t for t in model.graph.initializer if t.name not in gone]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def _read_names(graph: onnx.GraphProto) -> set[str]:
    """Every name a node of `graph` or of its subgraphs reads."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                names |= _read_names(sub)
    return names


class _Builder:
    """The nodes that compute fits from the inputs' shapes, each dim's size read once."""

    def __init__(self, dims: dict[str, tuple[str, int, int]]):
        self.dims, self.nodes, self.sizes = dims, [], {}

    def vector(self, fitted: list[Fit], shape: tuple[int, ...], name: str) -> str:
        """The fits as an int64 tensor of `shape`."""
        parts = [self.fit(f, f"{name}_{k}") for k, f in enumerate(fitted)]
        joined = self.node("Concat", parts, f"{name}_joined", axis=0) if len(parts) > 1 else parts[0]
        return self.node("Reshape", [joined, self.constant(list(shape), f"{name}_shape")], f"{name}_shaped")

    def cast(self, value: str, dtype: np.dtype, name: str) -> str:
        if dtype == np.int64:
            return value
        return self.node("Cast", [value], name, to=helper.np_dtype_to_tensor_dtype(dtype))

    def uniform(self, shape: str, reading: Reading, name: str) -> str:
        fill = numpy_helper.from_array(np.array([reading.family[1]], dtype=reading.dtype), f"{name}_fill")
        return self.node("ConstantOfShape", [shape], name, value=fill)

    def arange(self, shape: str, reading: Reading, name: str) -> str:
        """start + step * Range(0, n, 1) in the table's type, n its element count, in its shape: an integer Range,
        whose length is n exactly (a float one's is ceil((limit - start) / step), one too many when rounding
        makes the division land past n)."""
        _, start, step = reading.family
        count = self.node("ReduceProd", [shape], f"{name}_count", keepdims=0)
        zero, one = (self.typed(v, np.int64, f"{name}_{what}") for v, what in ((0, "zero"), (1, "one")))
        index = self.node("Range", [zero, count, one], f"{name}_index")
        typed = self.node("Cast", [index], f"{name}_typed", to=helper.np_dtype_to_tensor_dtype(reading.dtype))
        scaled = self.node("Mul", [typed, self.typed(step, reading.dtype, f"{name}_step")], f"{name}_scaled")
        flat = self.node("Add", [scaled, self.typed(start, reading.dtype, f"{name}_start")], f"{name}_flat")
        return self.node("Reshape", [flat, shape], name)

    def fit(self, fit: Fit, name: str) -> str:
        """`fit` as a one-element int64 vector."""
        if not fit.terms:
            return self.constant([fit.offset], name)
        if fit.same:
            return self.same(fit, name)
        value = None
        for n, term in enumerate(fit.terms):
            part = self.size(term.dim)
            if term.r:
                part = self.node("Add", [part, self.constant([term.r], f"{name}_t{n}_up")], f"{name}_t{n}_a")
            if term.k != 1:
                part = self.node("Div", [part, self.constant([term.k], f"{name}_t{n}_k")], f"{name}_t{n}_d")
            value = part if value is None else self.node("Mul", [value, part], f"{name}_t{n}_m")
        if fit.scale != 1:
            value = self.node("Mul", [value, self.constant([fit.scale], f"{name}_scale")], f"{name}_s")
        if fit.offset:
            value = self.node("Add", [value, self.constant([fit.offset], f"{name}_offset")], f"{name}_o")
        return value

    def same(self, fit: Fit, name: str) -> str:
        """'SAME' padding over the fit's one term: `reach - 1 - Mod(n - 1, stride)`, negative totals made 0
        (`Where`: Max takes int64 from opset 12 only), then half of it, or the rest."""
        length = self.fit(Fit(fit.terms), f"{name}_n")
        less = self.node("Sub", [length, self.constant([1], f"{name}_one")], f"{name}_less")
        residue = self.node("Mod", [less, self.constant([fit.same.stride], f"{name}_stride")], f"{name}_mod")
        total = self.node("Sub", [self.constant([fit.same.reach - 1], f"{name}_reach"), residue], f"{name}_raw")
        zero = self.constant([0], f"{name}_zero")
        total = self.node("Where", [self.node("Greater", [total, zero], f"{name}_some"), total, zero],
                          f"{name}_total")
        begin = self.node("Div", [total, self.constant([2], f"{name}_two")], f"{name}_begin")
        return self.node("Sub", [total, begin], name) if fit.same.end else begin

    def size(self, dim: str) -> str:
        """A dim's size, `Gather(Shape(input), [axis])`: a one-element int64 vector."""
        if dim not in self.sizes:
            graph_input, axis, _ = self.dims[dim]
            name = f"graphfix_refit_size_{len(self.sizes)}"
            shape = self.node("Shape", [graph_input], f"{name}_shape")
            self.sizes[dim] = self.node("Gather", [shape, self.constant([axis], f"{name}_axis")], name, axis=0)
        return self.sizes[dim]

    def constant(self, values: list[int], name: str) -> str:
        return self.typed(np.array(values, dtype=np.int64), np.int64, name)

    def typed(self, value, dtype, name: str) -> str:
        tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype), name)
        self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attributes))
        return name
