"""A model's weights kept apart (stubs in the light model) or in external data are handed to onnxruntime's
symbolic shape inference as graph inputs (`graphfix.io.external_data.without_external_values`), and only an
external tensor elsewhere (a node's attribute) stops it. The top-level ones were told apart by `id()` of protobuf
messages, which protobuf makes anew at each read: a ConvNeXt's stubs were taken for nested tensors, symbolic
inference was skipped on every such model, and a note said a weight "keeps its values in external data" of a
model that had none (helper 131)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphfix.analysis.shapes import symbolic_inference
from graphfix.io.external_data import without_external_values
from graphfix.io.weights import DETACH_MIN_BYTES, detach_inline

LAYERS = 40


def deep_linear() -> onnx.ModelProto:
    """x [B, T, 128] through LAYERS MatMuls, each weight above the heavy threshold."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((128, 128)).astype(np.float32), f"w{i}")
               for i in range(LAYERS)]
    assert weights[0].ByteSize() > DETACH_MIN_BYTES
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", f"w{i}"], [f"h{i}"]) for i in range(LAYERS)]
    graph = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 128])],
                              [helper.make_tensor_value_info(f"h{LAYERS - 1}", TensorProto.FLOAT, None)], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_every_stub_is_lifted_and_symbolic_inference_runs():
    light, weights = detach_inline(deep_linear())
    assert len(weights) == LAYERS
    lifted, names = without_external_values(light)
    assert names == {f"w{i}" for i in range(LAYERS)}
    assert {i.name for i in lifted.graph.input} >= names
    found = symbolic_inference(light)
    assert not found.incomplete, found.incomplete
    assert found.shapes[f"h{LAYERS - 1}"] == ["B", "T", 128]


def test_an_external_tensor_in_a_nodes_attribute_stops_it():
    model = deep_linear()
    value = numpy_helper.from_array(np.ones(4, np.float32), "c")
    value.data_location = TensorProto.EXTERNAL
    value.external_data.add(key="location", value="weights.bin")
    model.graph.node.append(helper.make_node("Constant", [], ["c"], value=value))
    with pytest.raises(ValueError, match="keeps its values in external data"):
        without_external_values(detach_inline(model)[0])
