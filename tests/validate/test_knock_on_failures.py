"""A failure that reads values the probe fabricated at an earlier failure's cut may be that one's consequence: a
warning beside the error it follows, never an error of its own (once onnxruntime's symbolic shapes reached
weight-heavy models too, a Swin's baked window padding listed three such errors after its two,
`tests/frontends/test_transformers_sweep.py`)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphfix


def test_a_failure_fed_by_fabricated_values_is_a_warning(tmp_path):
    """`Reshape(x, [2, 7, 4])` fails at other sizes; the Add after it then reads the values fabricated there."""
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"], name="baked"),
             helper.make_node("Relu", ["r"], ["h"], name="relu"),
             helper.make_node("Add", ["h", "x"], ["y"], name="after")]
    graph = helper.make_graph(nodes, "knock_on", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", 4])],
                              [numpy_helper.from_array(np.array([2, 7, 4], np.int64), "shape")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    found = graphfix.diagnose(str(path))
    assert any(f.severity.value == "error" and "baked" in f.nodes for f in found), found
    (after,) = [f for f in found if f.rule == "GF000" and "after" in f.nodes]
    assert after.severity.value == "warning" and "downstream of an earlier failure" in after.message, after
