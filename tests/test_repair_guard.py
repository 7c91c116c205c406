"""The suite-wide guard (tests/fixtures/repair_guard.py) can fail: a wrong model it is shown is named wrong, a right
one passes, and a file that is no longer the export is not paired with it."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from fixtures import guard_comparison
from fixtures.repair_guard import GUARD

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class Thirds(torch.nn.Module):
    """`x.reshape(B, int(T) // 3, 12).amax(-1)` traced at T=6: broken at every other length."""

    def forward(self, x):
        return x.reshape(x.shape[0], int(x.shape[1]) // 3, 12).amax(-1)


class RightThirds(torch.nn.Module):
    def forward(self, x):
        return x.reshape(x.shape[0], -1, 12).amax(-1)


def export(module, path, length=6):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, length, 4),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "G"}})
    return path


def test_every_export_to_a_file_is_recorded(tmp_path):
    path = export(Thirds(), tmp_path / "m.onnx")
    assert GUARD.source_of(path) is not None
    assert GUARD.source_of(onnx.load(path)) is not None  # the proto, as loaded, is the export too


def test_a_wrong_repair_is_named_and_a_right_one_passes(tmp_path):
    wrong = export(Thirds(), tmp_path / "m.onnx")  # the broken export, as a "repair" of itself
    right = export(RightThirds(), tmp_path / "right.onnx")
    record = GUARD.source_of(wrong)
    assert "it fails where PyTorch runs" in guard_comparison.wrong(record, right.with_name("m.onnx"))
    assert guard_comparison.wrong(record, right) == ""


def test_a_model_with_other_values_is_named(tmp_path):
    path = export(Thirds(), tmp_path / "m.onnx")
    model = onnx.load(path)
    node = onnx.helper.make_node("Mul", ["y_", "two"], ["y"])
    model.graph.node[-1].output[0] = "y_"
    model.graph.node.append(node)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.float32(2), "two"))
    onnx.save(model, tmp_path / "doubled.onnx")
    assert "differs from PyTorch" in guard_comparison.wrong(GUARD.source_of(path), tmp_path / "doubled.onnx")


def test_a_file_changed_since_its_export_is_not_paired(tmp_path):
    path = export(Thirds(), tmp_path / "m.onnx")
    model = onnx.load(path)
    model.doc_string = "edited by the test"
    onnx.save(model, path)
    assert GUARD.source_of(path) is None


def test_a_cli_repair_of_an_export_is_compared(tmp_path):
    """`graphfix repair` of the thirds model with its `[B, G]` output: repaired (T // 3) and compared."""
    path = export(Thirds(), tmp_path / "m.onnx", length=6)
    before = GUARD.compared
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(tmp_path / "fixed.onnx")])
    assert done.exit_code == 0, done.output
    assert GUARD.compared == before + 1 and not GUARD.failures
