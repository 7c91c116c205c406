"""The TensorProto each imported Constant came from, so that weights are read lazily and never copied.

onnx-graphsurgeon loads a Constant's values on first access to `.values` and keeps the proto behind a private
attribute. graphfix needs the proto itself (to memory-map external data, to stub large weights while exporting)
without loading it, so `import_graph` records it here, by the Constant's identity, through public API only.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from graphfix.io.mapped import MappedTensor, MappedValues

_SOURCES: dict[int, tuple[weakref.ref, onnx.TensorProto | MappedTensor]] = {}


def remember(tensor: gs.Constant, proto: onnx.TensorProto | MappedTensor) -> None:
    key = id(tensor)
    if key not in _SOURCES:
        weakref.finalize(tensor, _SOURCES.pop, key, None)
    _SOURCES[key] = (weakref.ref(tensor), proto)


def source_proto(tensor: gs.Tensor) -> onnx.TensorProto | MappedTensor | None:
    """The proto an imported Constant was read from; None for tensors created since (their values are arrays).

    A Constant imported without `remember_initializers` (a graph imported for a side analysis) whose values are
    not loaded yet answers with the proto behind its lazy values: loading them through onnx-graphsurgeon would
    resolve external data against the working directory."""
    entry = _SOURCES.get(id(tensor))
    if entry is not None and entry[0]() is tensor:
        return entry[1]
    lazy = vars(tensor).get("_values")  # onnx-graphsurgeon keeps unloaded values there (no public accessor)
    if isinstance(lazy, MappedValues):
        return lazy.mapped
    return lazy.tensor if isinstance(lazy, LazyValues) and isinstance(lazy.tensor, onnx.TensorProto) else None


class UnreadExternal(LazyValues):
    """The lazy values of a Constant kept in external data. onnx-graphsurgeon would load them with onnx's
    numpy_helper, which resolves the location against the working directory; graphfix reads external data only
    through `graphfix.io.external_data` with the model's folder (`RuleContext.constant_value`). Asked for
    `.values`, it raises a ValueError (code that folds constants takes that for unknown); exported, it is the
    proto as it was (onnx-graphsurgeon writes a LazyValues' proto without loading it)."""

    def __init__(self, tensor: onnx.TensorProto):
        super().__init__(tensor)

    def load(self):
        raise ValueError(f"tensor '{self.tensor.name}' keeps its values in external data: graphfix reads it only "
                         "from the model's folder (graphfix.io.external_data), never through onnx-graphsurgeon")


def known_values(value) -> np.ndarray | None:
    """A node attribute's or a Constant's values as an array; None for one kept in external data (see
    `UnreadExternal`), or for no value."""
    if isinstance(value, gs.Constant):
        return None if isinstance(vars(value).get("_values"), UnreadExternal) else np.asarray(value.values)
    return None if value is None else np.asarray(value)


def guard_external(graph: gs.Graph) -> None:
    """Give every Constant of `graph` kept in external data (initializers, node attributes such as a Constant's or
    ConstantOfShape's `value`, in subgraphs too) lazy values that never read it (`UnreadExternal`)."""
    for tensor in _all_constants(graph):
        lazy = vars(tensor).get("_values")
        if type(lazy) is LazyValues and isinstance(lazy.tensor, onnx.TensorProto) and \
                lazy.tensor.data_location == onnx.TensorProto.EXTERNAL:
            tensor._values = UnreadExternal(lazy.tensor)


def _all_constants(graph: gs.Graph) -> Iterator[gs.Constant]:
    """The Constants of `graph` and its subgraphs, and those held as node attributes."""
    yield from _constants(graph)
    for sub in (graph, *graph.subgraphs(recursive=True)):
        for node in sub.nodes:
            yield from (value for value in node.attrs.values() if isinstance(value, gs.Constant))


def remember_initializers(graph: gs.Graph, model_graph: onnx.GraphProto) -> None:
    """Record the initializer behind each Constant of `graph` (subgraphs included), matched by name, and the
    external-data tensor behind a Constant node's `value` (nodes are imported in order)."""
    protos = {t.name: t for t in _initializers(model_graph)}
    for tensor in _constants(graph):
        proto = protos.get(tensor.name)
        if proto is not None:
            remember(tensor, proto)
    for node, proto_node in zip(graph.nodes, model_graph.node, strict=False):
        value = node.attrs.get("value") if node.op == "Constant" else None
        attr = next((a for a in proto_node.attribute if a.name == "value"), None)
        if isinstance(value, gs.Constant) and attr is not None and proto_node.op_type == "Constant" \
                and attr.t.data_location == onnx.TensorProto.EXTERNAL:  # inline ones load through `.values`
            remember(value, attr.t)


def _initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _initializers(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _initializers(sub)


def _constants(graph: gs.Graph) -> Iterator[gs.Constant]:
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            yield tensor
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                yield from _constants(value)
