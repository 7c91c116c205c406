"""GF013: value_info that the model's dynamic inputs contradict (helper 126: a mean `ReduceSum(r) / Shape(r)[1]`
whose value_info still declared `r` as the export's [2, 7, 4]; onnxruntime's default session folded Shape(r) and
divided by 7 at every length, 0.2 off at 5 frames, while `check` passed it and `repair` wrote it unchanged with
exit 0: graphfix drops value_info for its analysis and probes with optimizations off). An error where a Shape
reads such a tensor, a warning otherwise; repaired by writing the inferred shapes, which a default session then
runs right. A declaration that only knows more than inference, and a consistent one, are not reported."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from graphfix.cli import cli


def _mean_over_time(declared: list, measured: str = "Identity", made: str = "Relu", x_dims=("B", "T", 4),
                    shape=()) -> onnx.ModelProto:
    """y = ReduceSum(r, 1) / Shape(measured(r))[1], r = made(x), its `r` declared `declared` in value_info."""
    made_node = helper.make_node(made, ["x", "target"] if shape else ["x"], ["r"])
    nodes = [made_node, helper.make_node(measured, ["r"], ["m"]), helper.make_node("Shape", ["m"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["t"], axis=0),
             helper.make_node("Cast", ["t"], ["tf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["r", "axes"], ["total"], keepdims=0),
             helper.make_node("Div", ["total", "tf"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_dims))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array(1, np.int64), "one"),
                               numpy_helper.from_array(np.array([1], np.int64), "axes"),
                               numpy_helper.from_array(np.array(shape, np.int64), "target")])
    graph.value_info.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, declared))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _deployed(path, x: np.ndarray) -> np.ndarray:
    """What a default onnxruntime session (all optimizations) returns."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


STALE = {  # name -> (model, the batch sizes it takes, what it computes)
    "shape-read": (lambda: _mean_over_time([2, 7, 4]), None, lambda x: np.maximum(x, 0).mean(1)),
    # helper 127: a Shape of the tensor through an op that keeps its shape; a dim onnx's inference leaves unknown
    "through-neg": (lambda: _mean_over_time([2, 7, 4], measured="Neg"), None, lambda x: np.maximum(x, 0).mean(1)),
    "unknown-to-onnx": (lambda: _mean_over_time([2, 14, 2], made="Reshape", x_dims=(2, "T", 4), shape=(0, -1, 2)),
                        2, lambda x: x.reshape(2, -1, 2).mean(1)),
}


@pytest.mark.parametrize("name", STALE)
def test_a_declared_export_shape_that_a_shape_reads_is_an_error_and_repaired(tmp_path, name):
    make, batch, want = STALE[name]
    path, out = tmp_path / "m.onnx", tmp_path / "fixed.onnx"
    onnx.save(make(), path)
    x = np.random.default_rng(0).random((batch or 3, 5, 4), dtype=np.float32)
    assert np.abs(_deployed(path, x) - want(x)).max() > 0.05  # the trap: 5 frames divided by the export's 7
    checked = CliRunner().invoke(cli, ["check", str(path)])
    assert checked.exit_code == 1 and "error GF013 stale-value-info" in checked.output, checked.output
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])
    assert done.exit_code == 0 and "applied GF013" in done.output, done.output
    for shape in [(batch or 3, 5, 4), (batch or 1, 9, 4), (2, 7, 4)]:
        x = np.random.default_rng(1).random(shape, dtype=np.float32)
        np.testing.assert_allclose(_deployed(out, x), want(x), rtol=1e-5)


def test_a_partly_static_declaration_is_a_warning(tmp_path):
    """`[B, 7, 4]`: onnxruntime 1.32 folds no Shape of it (helper 127), but another runtime may read it."""
    path = tmp_path / "m.onnx"
    onnx.save(_mean_over_time(["B", 7, 4]), path)
    done = CliRunner().invoke(cli, ["diagnose", str(path)])
    assert done.exit_code == 0 and "warning GF013 stale-value-info" in done.output, done.output


def test_a_pools_declared_length_that_onnx_infers_otherwise_is_no_finding(tmp_path):
    """A dynamo export of `MaxPool1d(2, 2, padding=1, ceil_mode=True)` over 5 positions declares 3, as PyTorch and
    onnxruntime compute; onnx's inference says 4 (helper 127: a false error, and a repair that wrote the 4)."""
    torch = pytest.importorskip("torch")

    class Pooled(torch.nn.Module):
        def forward(self, x):
            r = torch.nn.functional.max_pool1d(x, 2, 2, padding=1, ceil_mode=True)
            return r + torch.ones_like(r)

    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = torch.export.Dim("B", min=1, max=64)
        torch.onnx.export(Pooled(), (torch.randn(2, 2, 5),), str(path), dynamo=True, dynamic_shapes=({0: batch},))
    done = CliRunner().invoke(cli, ["check", str(path)])
    assert done.exit_code == 0 and "GF013" not in done.output, done.output


@pytest.mark.parametrize("declared", [["B", "T", 4], [None, None, 4]], ids=["consistent", "less-known"])
def test_a_declaration_inference_agrees_with_is_no_finding(tmp_path, declared):
    path = tmp_path / "m.onnx"
    onnx.save(_mean_over_time(declared), path)
    done = CliRunner().invoke(cli, ["diagnose", str(path)])
    assert done.exit_code == 0 and "GF013" not in done.output, done.output


def test_an_export_whose_inputs_were_made_dynamic_by_hand_is_an_error_and_repaired(tmp_path):
    """An MLP exported at [2, 7, 4] without dynamic axes, its shapes inferred into value_info (as onnxsim writes
    them), then its input's dims named by hand: no Shape reads a stale declaration, but onnxruntime fuses each
    Linear's MatMul and bias into a Gemm reshaped to the declared size, which fails at every other size (helper
    128: a warning, and `check` passed it). Repaired, it runs in a default session and matches PyTorch."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    path, out = tmp_path / "m.onnx", tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 7, 4),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    for value in (model.graph.input[0], model.graph.output[0]):
        for dim, name in zip(value.type.tensor_type.shape.dim, ["B", "T"], strict=False):
            dim.dim_param = name
    onnx.save(model, path)
    x = torch.randn(3, 11, 4)
    with pytest.raises(Exception, match="Reshape"):
        _deployed(path, x.numpy())
    found = CliRunner().invoke(cli, ["check", str(path)])
    assert found.exit_code == 1 and "error GF013 stale-value-info" in found.output, found.output
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])
    assert done.exit_code == 0 and "applied GF013" in done.output, done.output
    with torch.no_grad():
        np.testing.assert_allclose(_deployed(out, x.numpy()), module(x).numpy(), rtol=1e-4, atol=1e-5)
