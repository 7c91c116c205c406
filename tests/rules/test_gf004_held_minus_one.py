"""GF004 on `lin(h.view(int(B), int(T), -1))` with the export's sizes given (helper 133, the idiom the field
reports open with): `Reshape(h[B, T, 32], [2, 13, -1])` traced at 2 x 13. The entries equal the given sizes, which
no constraint pins, so the fix was unsafe and `repair` refused the model even with --trace-shape. The Linear
holds the -1 at 32: with both entries rebuilt from B and T it is 32 at every size, and with either left at its
export value it grows with that dim, so the Linear would run at the export size only. The graph leaves one
hypothesis: rebuilt by default. Where the two sizes were equal at export (`view(T, B, -1)` leaves the same graph),
or no reader holds the -1 (`view(int(B), int(T), 2, -1).sum(-1)`), it stays unsafe."""

from __future__ import annotations

import warnings

import pytest
from click.testing import CliRunner
from conftest import matches_module

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class Unflattened(torch.nn.Module):
    def __init__(self, heads=False):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.lin, self.heads = torch.nn.Linear(32, 32), torch.nn.Linear(32, 16), heads

    def forward(self, x):
        h, batch, length = self.a(x), int(x.shape[0]), int(x.shape[1])
        return h.view(batch, length, 2, -1).sum(-1) if self.heads else self.lin(h.view(batch, length, -1))


def _repair(tmp_path, module, batch, length):
    path, out = tmp_path / "m.onnx", tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(batch, length, 32),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 1: "T"}})
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), "--trace-shape", f"x={batch}x{length}x32"])
    return done, out


def test_entries_a_held_minus_one_pins_are_rebuilt_by_default(tmp_path):
    module = Unflattened()
    done, out = _repair(tmp_path, module, 2, 13)
    assert done.exit_code == 0 and "applied GF004" in done.output, done.output
    matches_module(out, module, [(1, 13, 32), (3, 5, 32), (2, 40, 32), (4, 1, 32)])


@pytest.mark.parametrize(("module", "batch", "length"), [(Unflattened(), 2, 2), (Unflattened(heads=True), 2, 13)],
                         ids=["equal-sizes", "minus-one-free"])
def test_without_that_pin_it_stays_unsafe(tmp_path, module, batch, length):
    done, _ = _repair(tmp_path, module, batch, length)
    assert done.exit_code == 1 and "is given, not solved" in done.output, done.output
