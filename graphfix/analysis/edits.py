"""Graph edits that replace a baked shape value with one computed at run time (the fixes of GF004).

Each function returns a closure `apply(graph)` for a `Fix`; the engine runs clean-up and toposort afterwards.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.builders import Builder, onnx_type


def replace_input(node: gs.Node, index: int, entries, opset: int, scalar: bool = False, like=None):
    def apply(graph: gs.Graph) -> None:
        b = Builder(graph, f"{node.name}_gf004", opset)
        vector = b.vector(entries)
        node.inputs[index] = b.scalar(vector, like.dtype) if scalar else vector

    return apply


def loosened(node: gs.Node, values: set[int], apply):
    """Run `apply`, then forget the baked sizes in the static shapes of graph outputs the node feeds."""

    def run(graph: gs.Graph) -> None:
        apply(graph)
        outputs = {id(t) for t in graph.outputs}
        queue, seen = list(node.outputs), set()
        while queue:
            tensor = queue.pop()
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            if id(tensor) in outputs and tensor.shape is not None:
                tensor.shape = [None if isinstance(d, int) and d in values else d for d in tensor.shape]
            queue.extend(out for consumer in tensor.outputs for out in consumer.outputs)

    return run


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
