"""Graph edits that replace a baked shape value with one computed at run time (the fixes of GF004).

Each function returns a closure `apply(graph)` for a `Fix`; the engine runs clean-up and toposort afterwards.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphfix.shape_utils import int64, shape_dim, shape_vector


def replace_input(node: gs.Node, index: int, entries, opset: int, scalar: bool = False, like=None):
    def apply(graph: gs.Graph) -> None:
        vector = shape_vector(graph, entries, opset, f"{node.name}_gf004")
        if scalar:  # Range limits are scalars of the start's type
            out = gs.Variable(f"{node.name}_gf004_limit", dtype=like.dtype, shape=[])
            squeezed = gs.Variable(f"{node.name}_gf004_limit_i64", dtype=np.int64, shape=[])
            graph.nodes.append(gs.Node("Squeeze", f"{node.name}_gf004_Squeeze", inputs=[vector], outputs=[squeezed]))
            graph.nodes.append(gs.Node("Cast", f"{node.name}_gf004_Cast", {"to": onnx_type(like.dtype)},
                                       inputs=[squeezed], outputs=[out]))
            vector = out
        node.inputs[index] = vector

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
    def apply(graph: gs.Graph) -> None:
        prefix = f"{node.name}_gf004_arange"
        length = shape_dim(graph, other, source, opset, prefix)
        limit = gs.Variable(f"{prefix}_limit", dtype=np.int64, shape=[])
        graph.nodes.append(gs.Node("Squeeze", f"{prefix}_Squeeze", inputs=[length], outputs=[limit]))
        positions = gs.Variable(f"{prefix}_range", dtype=np.int64)
        graph.nodes.append(gs.Node("Range", f"{prefix}_Range",
                                   inputs=[gs.Constant(f"{prefix}_start", np.array(0, np.int64)), limit,
                                           gs.Constant(f"{prefix}_delta", np.array(1, np.int64))],
                                   outputs=[positions]))
        cast = gs.Variable(f"{prefix}_cast", dtype=value.dtype)
        graph.nodes.append(gs.Node("Cast", f"{prefix}_Cast", {"to": onnx_type(value.dtype)}, inputs=[positions],
                                   outputs=[cast]))
        dims = [1] * value.ndim
        dims[axis] = -1
        out = gs.Variable(f"{prefix}_value", dtype=value.dtype)
        graph.nodes.append(gs.Node("Reshape", f"{prefix}_Reshape", inputs=[cast, int64(dims, f"{prefix}_dims")],
                                   outputs=[out]))
        node.inputs[index] = out

    return apply


def onnx_type(dtype) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
