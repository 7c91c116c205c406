"""Load-time checks of a model's graph structure, which onnx's checker lets through (onnx 1.23) and each of which
crashed a rule or the runtime probe:

- names that are not UTF-8 (protobuf hands them over as bytes, which every string operation trips on), and
  attributes without a type or with an empty list (but a Constant's, rewritten as an empty tensor:
  `empty_constants_as_tensors`);
- cycles: the checker refuses any graph that is not topologically sorted, cycle or not. graphfix accepts an
  unsorted graph (onnxruntime does) and refuses only a real cycle or an input nothing produces, naming it;
- a call of a model-local function domain's operator that no function defines (onnxruntime: "not a registered
  function/op").

Also the walks those checks and `graphfix.io.tensor_checks` share: every subgraph, and the graph's nodes in
topological order. Each refusal is one line naming the node or the name.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import onnx
from onnx import AttributeProto, TensorProto, helper

from graphfix.core.errors import InputError


def check_names(proto: onnx.ModelProto) -> None:
    """Every name is text: protobuf returns a name that is not UTF-8 as bytes."""
    for field, value in _names(proto):
        if not isinstance(value, str):
            raise InputError(f"{field} {value[:40]!r} is not UTF-8")


def _names(proto: onnx.ModelProto) -> Iterator[tuple[str, object]]:
    for entry in proto.opset_import:
        yield "opset domain", entry.domain
    for graph, _context in every_graph(proto):
        yield "graph name", graph.name
        for value in (*graph.input, *graph.output, *graph.value_info):
            yield "value name", value.name
        for tensor in graph.initializer:
            yield "initializer name", tensor.name
        for sparse in graph.sparse_initializer:
            yield "sparse initializer name", sparse.values.name
        yield from _node_names(graph.node)
    for function in proto.functions:
        yield "function name", function.name
        yield "function domain", function.domain
        for value in (*function.input, *function.output, *function.attribute):
            yield "function argument", value
        yield from _node_names(function.node)


def _node_names(nodes: Iterable[onnx.NodeProto]) -> Iterator[tuple[str, object]]:
    for node in nodes:
        yield "node name", node.name
        yield "node op_type", node.op_type
        yield "node domain", node.domain
        # each place worded once per node, not once per name (a graph has tens of thousands of names)
        tensor = f"tensor name of node '{node.name}'"
        for value in (*node.input, *node.output):
            yield tensor, value
        for attr in node.attribute:
            _check_attribute(node, attr)
            yield f"attribute name of node '{node.name}'", attr.name
            yield f"attribute reference of node '{node.name}'", attr.ref_attr_name


LIST_FIELDS = {AttributeProto.INTS: "ints", AttributeProto.FLOATS: "floats", AttributeProto.STRINGS: "strings",
               AttributeProto.TENSORS: "tensors", AttributeProto.GRAPHS: "graphs"}
LIST_TYPES = {"value_ints": AttributeProto.INTS, "value_floats": AttributeProto.FLOATS,
              "value_strings": AttributeProto.STRINGS}


def _check_attribute(node: onnx.NodeProto, attr: AttributeProto) -> None:
    """An attribute has a type and, for a list, values: onnx-graphsurgeon infers a list's type from its values
    and cannot write an empty one back (the checker accepts both)."""
    where = f"attribute '{attr.name}' of node '{node.name or node.op_type}'"
    if attr.ref_attr_name:
        return  # a function's attribute reference: the checker checks its context
    if attr.type == AttributeProto.UNDEFINED:
        raise InputError(f"{where} has no type")
    field = LIST_FIELDS.get(attr.type)
    if field is not None and not len(getattr(attr, field)):
        raise InputError(f"{where} is an empty list")


EMPTY_CONSTANT_LISTS = {"value_ints": TensorProto.INT64, "value_floats": TensorProto.FLOAT,
                        "value_strings": TensorProto.STRING}


def empty_constants_as_tensors(proto: onnx.ModelProto) -> None:
    """A Constant whose `value_ints`, `value_floats` or `value_strings` is an empty list (the dynamo exporter's
    for `torch.zeros([])`'s target shape, helper 119: transformers' Speech2Text) becomes the same constant as its
    `value`, an empty 1-D tensor of that type, in place: onnx-graphsurgeon writes no empty list back, and any other
    empty list stays refused."""
    graphs = [graph for graph, _context in every_graph(proto)]
    for node in (node for nodes in (*(g.node for g in graphs), *(f.node for f in proto.functions)) for node in nodes):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
            continue
        attr = node.attribute[0]
        kind = EMPTY_CONSTANT_LISTS.get(attr.name)
        if kind is not None and not attr.ref_attr_name and attr.type == LIST_TYPES[attr.name] \
                and not len(getattr(attr, LIST_FIELDS[attr.type])):
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("value", helper.make_tensor("value", kind, [0], [])))


def every_graph(proto: onnx.ModelProto) -> Iterator[tuple[onnx.GraphProto, str]]:
    """The main graph and every subgraph, with words that place each one."""
    pending: deque[tuple[onnx.GraphProto, str]] = deque([(proto.graph, "")])
    nodes_with_graphs = [(n, f" in function '{f.name}'") for f in proto.functions for n in f.node]
    while pending or nodes_with_graphs:
        if pending:
            graph, context = pending.popleft()
            yield graph, context
            nodes_with_graphs.extend((n, context) for n in graph.node)
            continue
        node, context = nodes_with_graphs.pop()
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                subs = [attr.g]
            elif attr.graphs:  # GRAPHS; any other attribute holds none (skipped: most nodes hold no subgraph)
                subs = list(attr.graphs)
            else:
                continue
            pending.extend((sub, f" in a subgraph of node '{node.name or node.op_type}'{context}") for sub in subs)


def check_acyclic(graph: onnx.GraphProto, context: str) -> None:
    """Refuse a cycle (Kahn's algorithm), naming a node on it, and a node writing a graph input or a weight (a name
    defined twice, which onnxruntime refuses: the dynamo exporter writes one for `output_names` that reuse an
    input's, and the graph then reads its own output before it is made). Inputs from outer scopes are not this
    graph's business; a subgraph's reads of this graph's tensors count as its node's inputs."""
    given = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name in given:
                raise InputError(f"tensor '{name}'{context} is defined twice: a graph input or weight, and an output "
                                 f"of node '{node.name or node.op_type}' (give the outputs names of their own)")
            if name:
                producer[name] = index
    waiting = [0] * len(graph.node)
    users: list[list[int]] = [[] for _ in graph.node]
    for index, node in enumerate(graph.node):
        for name in set(_reads(node)):
            source = producer.get(name)
            if source is not None:
                waiting[index] += 1
                users[source].append(index)
    ready = deque(i for i, count in enumerate(waiting) if count == 0)
    done = 0
    while ready:
        index = ready.popleft()
        done += 1
        for user in users[index]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    if done < len(graph.node):
        stuck = next(n for i, n in enumerate(graph.node) if waiting[i] > 0)
        raise InputError(f"node '{stuck.name or stuck.op_type}'{context} is on a cycle (it depends on its own "
                         "output)")


def check_local_calls(proto: onnx.ModelProto) -> None:
    """Refuse a node in a model-local function domain that no function of the model defines."""
    defined = {(f.domain, f.name) for f in proto.functions}
    domains = {domain for domain, _name in defined}
    nodes = [n for graph, _context in every_graph(proto) for n in graph.node]
    for node in [*nodes, *(n for f in proto.functions for n in f.node)]:
        if node.domain in domains and (node.domain, node.op_type) not in defined:
            raise InputError(f"node '{node.name or node.op_type}': {node.domain}:{node.op_type} is no function of "
                             f"the model (domain '{node.domain}' holds its model-local functions)")


def _reads(node: onnx.NodeProto) -> Iterator[str]:
    """The names a node reads: its inputs, and what its subgraphs read from outside themselves."""
    yield from (name for name in node.input if name)
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == AttributeProto.GRAPH else attr.graphs:
            yield from _free_names(sub)


def _free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from outside itself."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {s.values.name for s in graph.sparse_initializer}
    free: set[str] = set()
    for node in graph.node:
        free.update(name for name in _reads(node) if name not in defined)
        defined.update(node.output)
    return free - defined


def is_sorted(graph: onnx.GraphProto) -> bool:
    """Whether each node reads only graph inputs, initializers and the outputs of nodes before it."""
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    available |= {s.values.name for s in graph.sparse_initializer}
    for node in graph.node:
        if not all(name in available for name in _reads(node)):
            return False
        available.update(node.output)
    return True


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Put the nodes in topological order, in place (quadratic); nodes that read what nothing produces go last."""
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    available |= {s.values.name for s in graph.sparse_initializer}
    pending, ordered = list(graph.node), []
    while pending:
        still = [n for n in pending if not set(_reads(n)) <= available]
        ready = [n for n in pending if set(_reads(n)) <= available]
        if not ready:  # reads from nowhere: keep them last, the checker names them
            ordered.extend(still)
            break
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        pending = still
    del graph.node[:]
    graph.node.extend(ordered)
