"""GF004 on a Reshape with -1 whose entries equal the export sizes `--trace-shape` gives, a reader holding the -1
(`lin(h.view(int(B), int(T), -1))` traced at 2 x 13): the fix stays unsafe. A change that called it determined
(both entries rebuilt keep the -1 at 32; either one kept lets it grow) was reverted after helper 136 showed models
it rewrote wrongly with exit 0: a model's own 4 chunks exported at T = 4, `view(int(B), 4, int(T) // 4, -1)`,
whose `1` was the baked `T // 4`; a batch-1 export of `reshape(1, int(B) * int(T), -1)`, whose own 1 was B and
whose `B * T` was T. The entries' other forms fit the count as well (`view(2, int(B) * int(T) // 2, -1)`, two
halves of the tokens, on even B * T): the graph leaves more than one hypothesis."""

from __future__ import annotations

import warnings

import pytest
from click.testing import CliRunner

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

VIEWS = {
    "batch-and-length": (lambda h, b, t: h.view(b, t, -1), 2, 13),
    "own-chunks-at-their-count": (lambda h, b, t: h.view(b, 4, t // 4, -1), 2, 4),
    "packed-at-batch-1": (lambda h, b, t: h.reshape(1, b * t, -1), 1, 13),
}


class Unflattened(torch.nn.Module):
    def __init__(self, view):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.lin, self.view = torch.nn.Linear(32, 32), torch.nn.Linear(32, 16), view

    def forward(self, x):
        return self.lin(self.view(self.a(x), int(x.shape[0]), int(x.shape[1])))


@pytest.mark.parametrize(("view", "batch", "length"), VIEWS.values(), ids=VIEWS)
def test_entries_equal_to_given_sizes_are_not_rebuilt_by_default(tmp_path, view, batch, length):
    path, out = tmp_path / "m.onnx", tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Unflattened(view).eval(), (torch.randn(batch, length, 32),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 1: "T"}})
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), "--trace-shape",
                                    f"x={batch}x{length}x32"])
    assert done.exit_code == 1 and "applied" not in done.output, done.output  # written as it came, or not at all
