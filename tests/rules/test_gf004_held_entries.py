"""GF004 where nothing tells the export sizes: `reshape(int(B) * int(T), D)` before a Linear (batch and time
flattened with Python ints). The constant 24 is 2 * 12 or 3 * 8 or 4 * 6; which one does not matter, for the
Linear holds the last entry at D at every size, so the other one takes what the input's count leaves, -1. It
was refused ("give --trace-shape"). Where two entries are left (`reshape(int(B), int(T), D)` of a flattened
tensor), which one is the batch is not said: still refused, unless a broadcast right after meets each entry with
a size, axis by axis, and the element count then holds at every size (`h.reshape(int(B), int(T), D) + x`, refused
before: graphfix.analysis.sizes.held). The entry `_one_entry_left` takes the readers to hold counts only where it
is the input's own static trailing dim (helper 123: a last entry that a weight cut at the export length holds was
rewritten to -1 and written with exit 0, wrong at every other length: token mixing
`x.reshape(int(B) * 12, int(T)) @ W[:int(T)]` traced at 12 frames of 12, an instance norm
`layer_norm(x.reshape(B * C, T), (T,))`)."""

from __future__ import annotations

import warnings

import pytest
from click.testing import CliRunner
from conftest import matches_module

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class Flattened(torch.nn.Module):
    def __init__(self, unflatten=None):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.unflatten = torch.nn.Linear(8, 8), unflatten

    def forward(self, x):
        b, t = int(x.shape[0]), int(x.shape[1])
        h = self.lin(x.reshape(b * t, 8)).relu()
        return self.unflatten(h.reshape(b, t, 8), x) if self.unflatten else h.sum(0)


def _repaired(tmp_path, module, example=(2, 12, 8)):
    path, out = tmp_path / "m.onnx", tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(*example),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch", 1: "T"}})
    return CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)]), out


def _matches(module, out) -> None:
    """The written model matches PyTorch at batch 1, a longer length and the export size."""
    matches_module(out, module, [(1, 5, 8), (3, 20, 8), (2, 12, 8)])


def test_the_one_entry_a_linear_does_not_hold_takes_the_flattened_count(tmp_path):
    module = Flattened()
    done, out = _repaired(tmp_path, module)
    assert done.exit_code == 0 and "shape at run time: [-1, 8]" in done.output, done.output
    _matches(module, out)


@pytest.mark.parametrize("unflatten", [
    lambda h, x: h.sum(1),
    lambda h, x: h + x[0],
], ids=["summed", "one-entry-met"])
def test_two_entries_left_are_not_guessed(tmp_path, unflatten):
    """Nothing meets the unflattened `[2, 12, 8]` with sizes, or a broadcast meets its T alone (`+ x[0]`, of
    [T, 8]): the 2 may be the batch or the model's own."""
    done, out = _repaired(tmp_path, Flattened(unflatten))
    assert done.exit_code == 1 and not out.exists(), done.output


@pytest.mark.parametrize("unflatten", [
    lambda h, x: h + x,
    lambda h, x: h * (x[..., :1] > 0),
], ids=["residual", "masked"])
def test_two_entries_a_broadcast_meets_with_sizes_are_those_sizes(tmp_path, unflatten):
    """`h.reshape(int(B), int(T), 8) + x`: the Add meets entry 0 with the batch and entry 1 with T, and the
    flattened count is B * T rows; so is a mask of [B, T, 1]. Repaired, matching PyTorch at batch 1 and at a
    longer length (refused before)."""
    module = Flattened(unflatten)
    done, out = _repaired(tmp_path, module)
    assert done.exit_code == 0 and "entries 0, 1 of Reshape" in done.output, done.output
    _matches(module, out)


class TokenMixing(torch.nn.Module):
    """Frames mixed by a weight cut at the export length: the MatMul holds the last entry at T, not at a feature."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(64, 5))

    def forward(self, x):  # [B, T, 12]
        b, t = int(x.shape[0]), int(x.shape[1])
        return (x.transpose(1, 2).reshape(b * 12, t) @ self.weight[:t]).relu()


class TimeNorm(torch.nn.Module):
    """An instance norm over time, `layer_norm(x.reshape(B * C, T), (T,))`, with Python ints."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(12, 4, 3, padding=1)

    def forward(self, x):  # [B, T, 12] as [B, 12, T]
        x = x.transpose(1, 2)
        b, c, t = int(x.shape[0]), int(x.shape[1]), int(x.shape[2])
        return self.conv(torch.nn.functional.layer_norm(x.reshape(b * c, t), (t,)).reshape(x.shape))


@pytest.mark.parametrize("module", [TokenMixing, TimeNorm], ids=["token-mixing", "time-norm"])
def test_a_last_entry_a_weight_cut_at_the_export_length_holds_is_no_feature(tmp_path, module):
    """Exported with as many features as frames (12), so that -1 runs at every length and only PyTorch shows it
    wrong."""
    done, out = _repaired(tmp_path, module(), (2, 12, 12))
    assert done.exit_code == 1 and not out.exists(), done.output


class SquareImage(torch.nn.Module):
    """A trap (helper 125): `reshape(int(B), int(H), int(W), 4) + x.transpose(1, 2)` traced square (6 x 6): the Add
    meets entry 1 with W and entry 2 with H, which PyTorch reshapes as H, W; where a side is 1 PyTorch broadcasts
    and the rebuilt [B, W, H, 4] returns another shape."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        b, h, w = int(x.shape[0]), int(x.shape[1]), int(x.shape[2])
        return self.lin(x.reshape(b * h * w, 4)).reshape(b, h, w, 4) + x.transpose(1, 2)


def test_two_entries_that_held_one_number_at_export_are_not_told_apart_by_a_broadcast(tmp_path):
    path, out = tmp_path / "m.onnx", tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(SquareImage().eval(), (torch.randn(2, 6, 6, 4),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 1: "H", 2: "W"}})
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])
    assert done.exit_code == 1 and not out.exists() and "entries 0, 1, 2 of Reshape" not in done.output, done.output


class HeadsFirst(torch.nn.Module):
    """A trap: 2 heads first, `reshape(2, int(T), int(B), 4)`, against `[B, T, 1, 1]`, traced at batch 2: the Add
    meets entry 0 with B, which is the heads' 2; at B = 1 PyTorch broadcasts its 2 heads, where a rebuilt
    `[B, T, 2, 4]` returns one batch of 2 heads (another shape)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        b, t = int(x.shape[0]), int(x.shape[1])
        return self.lin(x.reshape(b * t, 8)).reshape(2, t, b, 4) + x[..., :1, None]


def test_a_rebuilt_entry_that_held_another_entrys_number_is_not_told_apart(tmp_path):
    done, out = _repaired(tmp_path, HeadsFirst())
    assert done.exit_code == 1 and not out.exists(), done.output
