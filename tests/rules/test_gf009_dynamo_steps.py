"""GF009 in a dynamo export (helper 134): torch.export makes a dim static where a Python loop runs over it
(`for t in range(x.shape[1])` exported with the length declared dynamic gives an input of [B, 10, 8]), so a
recurrent cell over a model's own 4 steps of an input whose length stayed symbolic is no unrolled loop over it.
It was an error, and `repair` of the healthy model exited 1; the TorchScript exporter's graph of the same module is
also a loop over 4 frames traced at T = 4, and stays an error without --trace-shape."""

from __future__ import annotations

import logging
import warnings

import pytest
from click.testing import CliRunner
from conftest import matches_module

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class FirstSteps(torch.nn.Module):
    def __init__(self, steps):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.steps = torch.nn.Linear(8, 8), steps

    def forward(self, x):
        h = torch.zeros_like(x[:, 0])
        for t in range(self.steps if self.steps else x.shape[1]):
            h = torch.tanh(self.lin(x[:, t]) + h)
        return h + x.mean(1)


def _export(path, module, dynamo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            if dynamo:
                length, batch = torch.export.Dim("T", min=4), torch.export.Dim("B")
                torch.onnx.export(module.eval(), (torch.randn(2, 10, 8),), str(path), dynamo=True, verbose=False,
                                  input_names=["x"], dynamic_shapes={"x": {0: batch, 1: length}})
            else:
                torch.onnx.export(module.eval(), (torch.randn(2, 10, 8),), str(path), dynamo=False,
                                  input_names=["x"], dynamic_axes={"x": {0: "B", 1: "T"}}, opset_version=17)
        finally:
            logging.disable(logging.NOTSET)
    return path


def test_a_models_own_steps_in_a_dynamo_export_are_no_loop(tmp_path):
    module, out = FirstSteps(4), tmp_path / "fixed.onnx"
    path = _export(tmp_path / "m.onnx", module, dynamo=True)
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])
    assert done.exit_code == 0 and "GF009" not in done.output, done.output
    matches_module(out, module, [(1, 4, 8), (2, 10, 8), (3, 17, 8)])


def test_the_torchscript_graph_of_the_same_steps_stays_an_error(tmp_path):
    path = _export(tmp_path / "m.onnx", FirstSteps(4), dynamo=False)
    found = CliRunner().invoke(cli, ["diagnose", str(path)])
    assert found.exit_code == 1 and "error GF009" in found.output, found.output


def test_a_loop_over_the_length_makes_it_static_in_a_dynamo_export(tmp_path):
    """The exporter's own answer to the loop: the length is no longer dynamic (nothing to find)."""
    path = _export(tmp_path / "m.onnx", FirstSteps(0), dynamo=True)
    import onnx

    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 10
