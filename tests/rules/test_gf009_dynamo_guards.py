"""GF009 in a dynamo export. torch.export makes a dim static where a Python loop runs over all of it
(`range(x.shape[1])` exported with the length declared dynamic gives an input of [B, 10, 8]), but not where a guard
only narrows its range: `range(min(T, 6))` guards T >= 6 and `range(max(T - 4, 6))` guards T <= 10, the length
stays symbolic, and the loop is unrolled for 6 steps, which ONNX keeps at every length without the guard
(helper 135: a skip of GF009 for dynamo exports wrote both with exit 0, wrong or failing where PyTorch runs). A
model's own 6 steps of a longer input leave the same graph as the first: it stays an error without --trace-shape."""

from __future__ import annotations

import logging
import warnings

import pytest
from click.testing import CliRunner

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

LOOPS = {
    "min": lambda length: min(length, 6),
    "max": lambda length: max(length - 4, 6),
    "own": lambda length: 6,
}


class Steps(torch.nn.Module):
    def __init__(self, count):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.count = torch.nn.Linear(8, 8), count

    def forward(self, x):
        h = torch.zeros_like(x[:, 0])
        for t in range(self.count(x.shape[1])):
            h = torch.tanh(self.lin(x[:, t]) + h)
        return h + x.mean(1)


def _export(path, module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            torch.onnx.export(module.eval(), (torch.randn(2, 10, 8),), str(path), dynamo=True, verbose=False,
                              input_names=["x"], dynamic_shapes={"x": {0: torch.export.Dim("B"),
                                                                       1: torch.export.Dim("T", min=2)}})
        finally:
            logging.disable(logging.NOTSET)
    return path


@pytest.mark.parametrize("count", LOOPS.values(), ids=LOOPS)
def test_a_loop_whose_length_a_guard_kept_symbolic_is_an_error(tmp_path, count):
    path = _export(tmp_path / "m.onnx", Steps(count))
    dims = __import__("onnx").load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_param, "the exporter kept the length symbolic"
    found = CliRunner().invoke(cli, ["diagnose", str(path)])
    assert found.exit_code == 1 and "error GF009" in found.output, found.output
    out = tmp_path / "fixed.onnx"
    refused = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])
    assert refused.exit_code == 1 and not out.exists(), refused.output
