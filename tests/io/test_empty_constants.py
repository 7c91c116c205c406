"""Helper 119: the dynamo exporter (`optimize=False`) writes `torch.zeros([])`'s target shape as
`Constant(value_ints=[])`, valid ONNX that onnxruntime runs; graphfix refused it as an empty list attribute (exit 2
on transformers' Speech2Text, healthy). Such a Constant is now read as its empty tensor, and written back as one
when a fix rewrites the graph; any other empty list is still refused (tests/io/test_load_checks.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from graphfix.cli import cli


def _model(path, baked: bool):
    """Y = X (reshaped to [B, 7, 8] where `baked`, which pins T = 7) + Expand(0.5, shape []), the shape an empty
    `value_ints`."""
    target = ["b", "rest"] if baked else ["b", "minus_one", "eight"]
    nodes = [helper.make_node("Shape", ["X"], ["shape"]), helper.make_node("Gather", ["shape", "zero"], ["b"], axis=0),
             helper.make_node("Concat", target, ["target"], axis=0),
             helper.make_node("Reshape", ["X", "target"], ["R"], name="heads"),
             helper.make_node("Constant", [], ["scalar_shape"]),
             helper.make_node("Expand", ["half", "scalar_shape"], ["z"]), helper.make_node("Add", ["R", "z"], ["Y"])]
    nodes[4].attribute.add(name="value_ints", type=onnx.AttributeProto.INTS)  # helper.make_node takes no empty list
    weights = [numpy_helper.from_array(np.array([0], np.int64), "zero"),
               numpy_helper.from_array(np.array([7, 8], np.int64), "rest"),
               numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
               numpy_helper.from_array(np.array([8], np.int64), "eight"),
               numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", "T", 8])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["B", "T", 8])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("baked", [False, True], ids=["healthy", "with-a-fix"])
def test_a_constant_of_an_empty_list_is_read_and_written_as_an_empty_tensor(tmp_path, baked):
    out = tmp_path / "fixed.onnx"
    done = CliRunner().invoke(cli, ["repair", str(_model(tmp_path / "m.onnx", baked)), "-o", str(out)])
    assert done.exit_code == 0 and out.exists(), done.output
    assert ("applied GF004" in done.output) == baked, done.output
    x = np.random.default_rng(0).standard_normal((1, 9, 8)).astype(np.float32)
    (y,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"X": x})
    np.testing.assert_allclose(y, x + 0.5, rtol=1e-6)
