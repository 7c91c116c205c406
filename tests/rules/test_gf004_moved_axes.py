"""GF004 follows a held entry's dim back through ops that move it (graphfix.analysis.sizes.along): attention code
unflattens with Python ints and transposes before a mask meets the result, `h.view(int(B), int(T), 2, 4)
.transpose(1, 2) * m[:, None, :, None]`. The Mul holds the Transpose's axes 0 and 2, which are the Reshape's
entries 0 and 1; the walk stopped at the Transpose and the model was refused with no fix. Through a Transpose,
an Unsqueeze, a Squeeze or a Gather on another axis the dim is the same dim: the entries are rebuilt by default
where the element count then holds at every size (as without the move), and a size the export gave two dims
(B = T) is still no entry that either could be."""

from __future__ import annotations

import warnings

import pytest
from click.testing import CliRunner
from conftest import matches_module

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class Heads(torch.nn.Module):
    """A Linear flattened to [B*T, 8], unflattened with the export's ints, moved, then met by a mask of x's."""

    def __init__(self, unflatten):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.unflatten = torch.nn.Linear(8, 8), unflatten

    def forward(self, x):
        batch, length = int(x.shape[0]), int(x.shape[1])
        mask = x[..., 0].sigmoid()
        return self.unflatten(self.lin(x).reshape(-1, 8), batch, length, mask)


MOVED = {
    "transposed": lambda h, b, t, m: h.view(b, t, 2, 4).transpose(1, 2) * m[:, None, :, None],
    "gathered": lambda h, b, t, m: h.view(b, t, 2, 4)[:, :, 1] * m[:, :, None],
    "unsqueezed": lambda h, b, t, m: h.view(b, t, 8).unsqueeze(1) * m[:, None, :, None],
    "squeezed": lambda h, b, t, m: h.view(b, t, 1, 8).squeeze(2) * m[:, :, None],
    "permuted": lambda h, b, t, m: h.view(b, t, 2, 4).permute(3, 1, 0, 2) + m.T[None, :, :, None],
}


def _export(tmp_path, module, batch=3, length=5):
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(batch, length, 8),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 1: "T"}})
    return path


@pytest.mark.parametrize("unflatten", MOVED.values(), ids=MOVED)
def test_a_reshape_held_past_a_move_is_rebuilt(tmp_path, unflatten):
    module, out = Heads(unflatten), tmp_path / "fixed.onnx"
    done = CliRunner().invoke(cli, ["repair", str(_export(tmp_path, module)), "-o", str(out)])
    assert done.exit_code == 0 and "entries 0, 1 of Reshape" in done.output, done.output
    matches_module(out, module, [(1, 3, 8), (3, 5, 8), (2, 9, 8), (4, 1, 8)])


def test_two_dims_of_one_export_size_are_no_entry_either_could_be(tmp_path):
    """Exported at B = T = 4 the shape is [4, 4, 2, 4]: which 4 is the batch, the transposed Mul says, but the
    entries' values do not tell them apart: refused, nothing written."""
    module, out = Heads(MOVED["transposed"]), tmp_path / "fixed.onnx"
    refused = CliRunner().invoke(cli, ["repair", str(_export(tmp_path, module, 4, 4)), "-o", str(out)])
    assert refused.exit_code == 1 and not out.exists(), refused.output


class Pooled(torch.nn.Module):
    """The first frame's features spread over the length with an int, moved to channels first, concatenated
    with x's channels (a Concat off its axis holds the entry: no broadcast)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        first = self.lin(x[:, :1]).expand(-1, int(x.shape[1]), -1)
        return torch.cat([x.transpose(1, 2), first.transpose(1, 2)], 1)


def test_an_expand_entry_a_concat_holds_past_a_transpose_is_rebuilt(tmp_path):
    module, out = Pooled(), tmp_path / "fixed.onnx"
    done = CliRunner().invoke(cli, ["repair", str(_export(tmp_path, module)), "-o", str(out)])
    assert done.exit_code == 0 and "entry 1 of Expand" in done.output, done.output
    matches_module(out, module, [(1, 3, 8), (3, 12, 8), (2, 5, 8)])
