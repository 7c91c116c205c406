"""Resource bombs: small files that ask for terabytes, millions of nodes or endless loops."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _model(nodes, inputs, outputs, initializers=(), functions=(), opsets=OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "bomb", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions), ir_version=9)


def _x(shape=("B", 4)):
    return [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]


def _y(shape=None):
    return [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]


def reshape_1e12() -> onnx.ModelProto:
    """Expand a [B, 4] input to [10**6, 10**6] (10**12 floats)."""
    shape = numpy_helper.from_array(np.array([10**6, 10**6], dtype=np.int64), "shape")
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Expand", ["s", "shape"], ["big"]),
             helper.make_node("Reshape", ["big", "flat"], ["y"])]
    flat = numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat")
    return _model(nodes, _x(), _y(), [shape, flat])


def range_1e12() -> onnx.ModelProto:
    consts = [numpy_helper.from_array(np.array(v, dtype=np.int64), n) for n, v in
              (("start", 0), ("limit", 10**12), ("delta", 1))]
    nodes = [helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
             helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Add", ["rf", "s"], ["y"])]
    return _model(nodes, _x(), _y(), consts)


def huge_input_dim() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"])], _x((10**12, 4)), _y())


def function_2_20() -> onnx.ModelProto:
    """F20 calls F19 twice, ..., F0 is one Relu: 2**20 Relus once inlined, in a file of a few KB."""
    functions = [helper.make_function("local", "F0", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                                      OPSET)]
    for level in range(1, 21):
        body = [helper.make_node(f"F{level - 1}", ["a"], ["h"], domain="local"),
                helper.make_node(f"F{level - 1}", ["h"], ["b"], domain="local")]
        functions.append(helper.make_function("local", f"F{level}", ["a"], ["b"], body,
                                              [*OPSET, helper.make_opsetid("local", 1)]))
    nodes = [helper.make_node("F20", ["x"], ["y"], domain="local")]
    return _model(nodes, _x(), _y(), functions=functions, opsets=[*OPSET, helper.make_opsetid("local", 1)])


def loop_1e12() -> onnx.ModelProto:
    body = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                              helper.make_node("Add", ["v_in", "one"], ["v_out"])], "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)],
                             [numpy_helper.from_array(np.array(1, dtype=np.float32), "one")])
    consts = [numpy_helper.from_array(np.array(10**12, dtype=np.int64), "trips"),
              numpy_helper.from_array(np.array(True), "cond")]
    nodes = [helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)]
    return _model(nodes, _x(), _y(), consts)


def chain_1e6() -> onnx.ModelProto:
    count = 10**6
    nodes = [helper.make_node("Relu", [f"t{i}" if i else "x"], [f"t{i + 1}" if i < count - 1 else "y"])
             for i in range(count)]
    return _model(nodes, _x(), _y(["B", 4]))


def sequence_input() -> onnx.ModelProto:
    seq = helper.make_tensor_sequence_value_info("x", TensorProto.FLOAT, ["B", 4])
    nodes = [helper.make_node("ConcatFromSequence", ["x"], ["c"], axis=0),
             helper.make_node("Relu", ["c"], ["y"])]
    return _model(nodes, [seq], _y())


def _squared(first: list, times: int) -> onnx.ModelProto:
    """A shape value `first` computes from x's length, squared `times` times, the shape a Reshape of x takes: the
    size analysis' arithmetic of one node then ran without bound (helper 108)."""
    ints = [numpy_helper.from_array(np.array(v, dtype=np.int64), n) for n, v in (("one", 1), ("ten", 10),
                                                                                ("zero", [0]))]
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "one"], ["t"], axis=0),
             *first, *(helper.make_node("Mul", [f"a{i}", f"a{i}"], [f"a{i + 1}"]) for i in range(times)),
             helper.make_node("Unsqueeze", [f"a{times}", "zero"], ["shape"]),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    return _model(nodes, _x((1, "T")), _y(), ints)


def squared_length() -> onnx.ModelProto:
    """(T + 1)**(2**18): sympy's `expand` of the Reshape's element count never ended."""
    return _squared([helper.make_node("Add", ["t", "one"], ["a0"])], 18)


def huge_number() -> onnx.ModelProto:
    """(T - T + 10)**(2**27): a number of 2**27 digits, computed exactly by the screen and by sympy."""
    return _squared([helper.make_node("Sub", ["t", "t"], ["z"]), helper.make_node("Add", ["z", "ten"], ["a0"])], 27)


BOMBS = {f.__name__: f for f in (reshape_1e12, range_1e12, huge_input_dim, function_2_20, loop_1e12, chain_1e6,
                                 sequence_input, squared_length, huge_number)}
