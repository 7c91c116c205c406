"""Models whose text carries Python that writes a marker file when something evaluates it (issue #20, item 1).

Each builder takes the marker path and returns a model that onnx's checker accepts; each payload sits where model
text once reached an evaluator: a declared output dim (graphfix's own dim evaluation), an input dim that shape
inference carries into an expression, a custom-domain node's attribute (the symbolic size pass dispatches on the
op name) and a string tensor read as Slice ends (onnxruntime's symbolic shape inference).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def payload(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"


def _model(nodes, inputs, outputs, initializers=(), domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=opsets)


def declared_output_dim(marker: Path) -> onnx.ModelProto:
    """Y is declared [2, <payload>]: the probe evaluates declared dims at each binding."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, payload(marker)])
    shape = numpy_helper.from_array(np.array([2, -1], np.int64), "shape")
    return _model([helper.make_node("Reshape", ["X", "shape"], ["Y"], name="reshape")], [x], [y], [shape])


def input_dim(marker: Path) -> onnx.ModelProto:
    """X is [<payload>]; Pad makes Y '<payload> + 1', an expression shape inference hands back as text."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [payload(marker)])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    pads = numpy_helper.from_array(np.array([1, 0], np.int64), "pads")
    return _model([helper.make_node("Pad", ["X", "pads"], ["Y"], name="pad")], [x], [y], [pads])


def custom_attribute(marker: Path) -> onnx.ModelProto:
    """evil:Unsqueeze with axes = [<payload>] (no schema, so no type check), then a Slice that makes rules run the
    size analysis over the whole graph."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    cut = [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("starts", 0), ("ends", 1))]
    nodes = [helper.make_node("Unsqueeze", ["X"], ["U"], name="unsqueeze", domain="evil", axes=[payload(marker)]),
             helper.make_node("Slice", ["U", "starts", "ends"], ["Y"], name="slice")]
    return _model(nodes, [x], [y], cut, domains=["evil"])


def string_tensor(marker: Path) -> onnx.ModelProto:
    """Slice ends from a STRING initializer holding the payload: symbolic shape inference takes it as a size."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.array([0], np.int64), "starts"),
             helper.make_tensor("ends", TensorProto.STRING, [1], [payload(marker).encode()]),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    return _model([helper.make_node("Slice", ["X", "starts", "ends", "axes"], ["Y"], name="slice")], [x], [y], inits)


BUILDERS = {"declared_output_dim": declared_output_dim, "input_dim": input_dim,
            "custom_attribute": custom_attribute, "string_tensor": string_tensor}
