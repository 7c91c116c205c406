"""Moving between onnx.ModelProto and onnx-graphsurgeon's Graph, with the engine's one clean-up step."""

from __future__ import annotations

from collections import Counter

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

from graphfix.core.errors import InputError
from graphfix.io.protos import initializers_as_inputs
from graphfix.io.sources import guard_external, remember_initializers
from graphfix.io.weights import Weights, attach, detached

# onnx-graphsurgeon logs every folded or removed node; graphfix reports what it did itself.
G_LOGGER.severity = G_LOGGER.ERROR


def import_graph(model: onnx.ModelProto, value_info=None, weights: Weights | None = None) -> gs.Graph:
    """Import for analysis, with `value_info` (fresh shapes) in place of the model's own; unnamed nodes get names
    (`Op_output`) so findings can point at them; stubs of a light model get their `weights` back. The model is
    left as it was."""
    if value_info is None:
        graph = gs.import_onnx(model)
    else:
        original = list(model.graph.value_info)
        del model.graph.value_info[:]
        model.graph.value_info.extend(value_info)
        try:
            graph = gs.import_onnx(model)
        finally:
            del model.graph.value_info[:]
            model.graph.value_info.extend(original)
    remember_initializers(graph, model.graph)
    guard_external(graph)  # external data is read from the model's folder only, never through gs
    attach(graph, weights or {})
    unique_node_names(graph)
    return graph


def tidy(graph: gs.Graph) -> gs.Graph:
    """Clean-up, toposort and unique naming: run once by the engine after fixes, never by rules.

    Graph inputs are kept even when unused (dropping them is a decision for the user, see GF001), and dims of
    intermediate tensors are forgotten so that shape inference recomputes them for the repaired graph.
    """
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    unique_node_names(graph)
    unique_tensor_names(graph)
    io = {id(t) for t in (*graph.inputs, *graph.outputs)}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in io:
            tensor.shape = None
    return graph


def unique_node_names(graph: gs.Graph) -> None:
    """Give every node a name, and a unique one: findings and onnxruntime errors refer to nodes by name.

    Nodes keep the names they have; unnamed nodes and later duplicates get a numbered name."""
    existing = {n.name for n in graph.nodes if n.name}
    taken: set[str] = set()
    counts: Counter[str] = Counter()
    for node in graph.nodes:
        base = node.name or f"{node.op}_{node.outputs[0].name if node.outputs else 'noout'}"
        name = base
        while name in taken or (name != node.name and name in existing):
            counts[base] += 1
            name = f"{base}_{counts[base]}"
        taken.add(name)
        node.name = name


def unique_tensor_names(graph: gs.Graph) -> None:
    """Rename tensors that fixes created with clashing names (the first one keeps its name)."""
    owners: dict[str, int] = {}
    for tensor in _all_tensors(graph):
        if not tensor.name:
            continue
        if tensor.name in owners and owners[tensor.name] != id(tensor):
            suffix = 1
            while f"{tensor.name}_{suffix}" in owners:
                suffix += 1
            tensor.name = f"{tensor.name}_{suffix}"
        owners[tensor.name] = id(tensor)


def _all_tensors(graph: gs.Graph):
    seen: set[int] = set()
    for tensor in graph.inputs:
        seen.add(id(tensor))
        yield tensor
    for node in graph.nodes:
        for tensor in (*node.inputs, *node.outputs):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                yield tensor


def export_graph(graph: gs.Graph, like: onnx.ModelProto, weights: Weights | None = None) -> onnx.ModelProto:
    """Export `graph`, keeping the model-level fields (IR version, opsets, metadata, functions) of `like`.

    With a `weights` map the export is light: large weights are stubs, recorded in the map, never copied."""
    for value in (*like.graph.input, *like.graph.output):
        if value.type.WhichOneof("value") not in ("tensor_type", None):  # onnx-graphsurgeon writes tensors only
            raise InputError(f"graph {'input' if value in like.graph.input else 'output'} '{value.name}' is a "
                             f"{value.type.WhichOneof('value').removesuffix('_type')}: graphfix cannot rewrite "
                             "graphs with such inputs or outputs")
    if weights is None:
        model = gs.export_onnx(graph, do_type_check=False)
    else:
        with detached(graph, weights):
            model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = like.ir_version
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, field, getattr(like, field))
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    del model.graph.metadata_props[:]
    model.graph.metadata_props.extend(like.graph.metadata_props)  # the exporter's record (graphfix.io.torch_ranges)
    if not model.functions and like.functions:
        model.functions.extend(like.functions)
    return initializers_as_inputs(model)
