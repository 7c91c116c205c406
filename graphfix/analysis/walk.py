"""Linear-time reachability over an onnx-graphsurgeon graph, subgraphs' outer-scope reads included.

Every function here visits each node and tensor at most once, so rules built on them stay linear in graph size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

import onnx_graphsurgeon as gs


def node_inputs(node: gs.Node) -> list[gs.Tensor]:
    """The node's inputs plus the outer-scope tensors its subgraphs (Loop, If, Scan bodies) read."""
    inputs = [t for t in node.inputs if t.name or not isinstance(t, gs.Variable)]
    for sub in _subgraphs(node):
        inputs.extend(outer_scope_reads(sub))
    return inputs


def outer_scope_reads(graph: gs.Graph) -> list[gs.Tensor]:
    """Tensors a subgraph reads without producing them or receiving them as subgraph inputs."""
    local = {id(t) for t in graph.inputs}
    reads: dict[int, gs.Tensor] = {}
    for node in graph.nodes:
        local.update(id(t) for t in node.outputs)
    for node in graph.nodes:
        for tensor in node_inputs(node):
            if id(tensor) not in local and not isinstance(tensor, gs.Constant):
                reads.setdefault(id(tensor), tensor)
    return list(reads.values())


def _subgraphs(node: gs.Node) -> Iterable[gs.Graph]:
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            yield value
        elif isinstance(value, list):
            yield from (v for v in value if isinstance(v, gs.Graph))


def consumers_map(graph: gs.Graph) -> dict[int, list[gs.Node]]:
    """id(tensor) -> nodes reading it, counting reads from inside subgraphs."""
    readers: dict[int, list[gs.Node]] = {}
    for node in graph.nodes:
        for tensor in node_inputs(node):
            readers.setdefault(id(tensor), []).append(node)
    return readers


def live_nodes(graph: gs.Graph) -> set[int]:
    """ids of nodes some graph output depends on (backwards from the outputs)."""
    live: set[int] = set()
    queue = deque(t for t in graph.outputs)
    seen: set[int] = set()
    while queue:
        tensor = queue.popleft()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        for node in tensor.inputs:
            if id(node) not in live:
                live.add(id(node))
                queue.extend(node_inputs(node))
    return live


def input_dependent_tensors(graph: gs.Graph) -> set[int]:
    """ids of tensors whose value depends on at least one graph input (forwards from the inputs)."""
    readers = consumers_map(graph)
    reached: set[int] = set()
    queue = deque(graph.inputs)
    done: set[int] = set()
    while queue:
        tensor = queue.popleft()
        if id(tensor) in reached:
            continue
        reached.add(id(tensor))
        for node in readers.get(id(tensor), ()):
            if id(node) not in done:
                done.add(id(node))
                queue.extend(node.outputs)
    return reached


def tensor_names(graph: gs.Graph) -> set[str]:
    """Names of every tensor the graph and its subgraphs use."""
    names = set(graph.tensors())
    for node in graph.nodes:
        for sub in _subgraphs(node):
            names |= tensor_names(sub)
    return names


def ancestors(tensor: gs.Tensor, depth: int) -> list[gs.Tensor]:
    """`tensor` and the inputs of its producers, up to `depth` nodes upstream (first inputs' producers only)."""
    found, frontier = [tensor], [tensor]
    for _ in range(depth):
        frontier = [t for f in frontier if f.inputs for t in f.inputs[0].inputs]
        found.extend(frontier)
    return found


def within(start: Iterable[gs.Tensor], hops: int, ends: Callable[[gs.Node, gs.Tensor], bool],
          through: Callable[[gs.Node], bool], ahead: Callable[[gs.Node], list] | None = None, up: bool = False) -> bool:
    """Whether an op that `ends` accepts (given the op and the tensor it was reached by) reads one of the tensors
    reached from `start` within `hops` ops (with `up`, computes one), each op passed once where `through` accepts
    it, on to the tensors `ahead` of it (its outputs, or with `up` its inputs, by default). The bounded walks of the
    rules' reads: a Shape that measures a declared tensor (GF013), a softmax a score reaches (sums_near), a shape
    vector a constant becomes (int_echoes)."""
    frontier, seen = list(start), set()
    for _ in range(hops):
        step = []
        for tensor in frontier:
            for op in (tensor.inputs[:1] if up else tensor.outputs):
                if ends(op, tensor):
                    return True
                if id(op) not in seen and through(op):
                    seen.add(id(op))
                    step.extend(ahead(op) if ahead is not None else op.inputs if up else op.outputs)
        frontier = step
    return False
