"""A Concat onnxruntime runs and ONNX rejects is no reference (helper 138), and an output dim the exporter wrote as
the traced `T - 1` is no promise: `cat([x[:, 1:], cls.expand(int(B), int(T) - 1, D)], -1)`, rebuilt as B and
T - 1, was refused twice over. Its output declared the traced 4 (only plain export sizes were followed), and at
T = 1 onnxruntime's Concat took the empty `x[:, 1:]` beside the baked (2, 4, 4) and returned a (2, 4, 8), where
PyTorch and the repaired model return a (1, 0, 8)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from graphfix.cli import cli
from graphfix.validate.lenient import emptied, skipped_empty_input
from graphfix.validate.runner import ModelRunner


def _concat(axis: int) -> ModelRunner:
    graph = helper.make_graph(
        [helper.make_node("Concat", ["a", "b"], ["y"], name="cat", axis=axis)], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, None, None]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return ModelRunner(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize(("a", "b", "lenient"), [
    ((1, 0, 4), (2, 4, 4), True),   # an empty input whose other dims differ: onnxruntime runs it
    ((2, 4, 0), (2, 4, 4), False),  # an empty input of the same dims off the axis: a valid Concat
    ((2, 4, 3), (2, 4, 4), False),  # nothing empty
])
def test_a_concat_of_an_empty_input_whose_dims_differ_is_found(a, b, lenient):
    runner = _concat(axis=2)
    feeds = {"a": np.zeros(a, np.float32), "b": np.zeros(b, np.float32)}
    assert runner.run(feeds).ok  # onnxruntime runs all three
    found = skipped_empty_input(runner, feeds)
    assert bool(found) is lenient, found
    if lenient:
        assert "'cat'" in found and "[1, 0, 4] beside [2, 4, 4]" in found


def test_only_an_output_emptied_in_the_candidate_asks_for_the_check():
    full, empty = {"y": np.zeros((2, 4, 8))}, {"y": np.zeros((1, 0, 8))}
    assert emptied(full, empty) and not emptied(full, full) and not emptied(empty, empty)


torch = pytest.importorskip("torch")


class ClassTagged(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 4))

    def forward(self, x):
        return torch.cat([x[:, 1:], self.cls.expand(int(x.shape[0]), int(x.shape[1]) - 1, 4)], -1)


@pytest.mark.torch
@pytest.mark.parametrize("given", [(), ("--trace-shape", "x=2x5x4"), ("--no-simplify",)],
                         ids=["export-solved", "export-given", "not-simplified"])
def test_a_rebuilt_t_minus_one_is_written_and_matches_pytorch(tmp_path, given):
    module, path, out = ClassTagged().eval(), tmp_path / "m.onnx", tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 5, 4),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"}})
    assert [d.dim_value for d in onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim] == [2, 4, 8]
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), *given])
    assert done.exit_code == 0 and "as T - 1" in done.output, done.output
    assert "now T - 1" in done.output  # the output declares what the repair computes: the fix cleared the traced
    # 4 (not simplified: declared nothing), which onnxsim names `unk__0` (simplified)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 4), (3, 9, 4), (2, 5, 4), (1, 1, 4), (4, 2, 4)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = module.cls.expand(shape[0], shape[1] - 1, 4)
            expected = torch.cat([x[:, 1:], expected], -1).numpy()
        got = session.run(None, {"x": x.numpy()})[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-6)
