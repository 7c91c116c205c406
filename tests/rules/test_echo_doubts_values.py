"""A safe fix beside another use of the same `int(T)` in a form the echo check did not read (helper 140): a head
split baked with `int(T)` is rebuilt as T, the model then runs at every length, and the original, which fails
there, shows no reference. `arange(T) < T // 2`, `>= T - 3`, `.clamp(max=T // 2)`, `% (T // 2)`, `arange(T // 2,
S + T // 2)`, `scores.triu(-(T // 2))`, `pos - (T - 1) / 2` and `pos / (T // 2)` were written with exit 0, wrong at
every other length; then (helper 141) `< T // 4`, `pos * (2.0 / T)`, `pos / (T / 4)`, segment starts `[0, T //
2]`, `torch.full(..., T // 2)` and given lengths over `T - 1`; then (helper 142) float thresholds and clamps of
positions, a value spread by an Expand, `pos / (T / 5)` and `pos ** 2 / T ** 2`. Each is now read as an echo
of the export length: the fix is unsafe, nothing is written by default. Exported at a length no such constant
equals (20 frames, a model's own `pos < 4`, which is 13 // 3), the fix stands and the repair matches PyTorch. No
list of forms is complete (README, "The other uses of a baked int")."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def _positions(x):
    return torch.arange(x.shape[1])


ECHOES = {  # what each model adds to the trunk's frames, from the positions and the baked length; the lengths
    # it is exported at (a quarter of 8 is 2, which no form reads)
    "prefix-half": (lambda p, n: (p < n // 2).float(), (8, 16)),
    "last-three": (lambda p, n: (p >= n - 3).float(), (8, 16)),
    "clamped-half": (lambda p, n: p.clamp(max=n // 2).float(), (8, 16)),
    "phase": (lambda p, n: (p % (n // 2)).float(), (8, 16)),
    "segment": (lambda p, n: torch.div(p, n // 2, rounding_mode="floor").float(), (8, 16)),
    "centred-int": (lambda p, n: (p - n // 2).float(), (8, 16)),
    "centred-float": (lambda p, n: p.float() - (n - 1) / 2, (8, 16)),
    "half-scaled": (lambda p, n: p.float() / (n // 2) - 1, (8, 16)),
    "shifted-range": (lambda p, n: torch.arange(n // 2, p.shape[0] + n // 2).float(), (8, 16)),
    # helper 141
    "quarter-threshold": (lambda p, n: (p < n // 4).float(), (16, 24)),
    "two-over-n": (lambda p, n: p.float() * (2.0 / n) - 1, (12, 16)),
    "quarter-scale": (lambda p, n: p.float() / (n / 4), (12, 16)),
    "segment-starts": (lambda p, n: (p[:, None] >= torch.tensor([0, n // 2])).sum(-1).float(), (8, 16)),
    "filled-half": (lambda p, n: (p + torch.full((p.shape[0],), n // 2)).float(), (12, 16)),
    # helper 142
    "float-threshold": (lambda p, n: (p.float() < n / 2).float(), (12, 16)),
    "float-clamp": (lambda p, n: p.float().clamp(max=n / 4), (12, 16)),
    "spread-half": (lambda p, n: (p < torch.tensor([n // 2]).expand(p.shape[0])).float(), (12, 16)),
    "fifth-scale": (lambda p, n: p.float() / (n / 5), (12, 16)),
    "squared": (lambda p, n: p.float() ** 2 / n ** 2, (12, 16)),
}


class Trunk(torch.nn.Module):
    """A head split whose length went through int(): GF004 rebuilds its entry as T (SAFE alone)."""

    def __init__(self, echo=None, band=False):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.echo, self.band = torch.nn.Linear(8, 8), echo, band

    def forward(self, x):
        n = int(x.shape[1])
        h = self.lin(x).reshape(x.shape[0], n, 2, 4).transpose(1, 2).softmax(-1)
        h = h.transpose(1, 2).reshape(x.shape[0], -1, 8)
        if self.band:  # scores kept within n // 2 below the diagonal
            return torch.triu(h @ h.transpose(1, 2), diagonal=-(n // 2)).softmax(-1) @ h
        return h if self.echo is None else h + self.echo(_positions(x), n)[None, :, None]


def _repair(tmp_path, module, length):
    path, out = tmp_path / "m.onnx", tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, length, 8),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"},
                                                                               "y": {0: "B", 1: "T"}})
    return CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)]), out


@pytest.mark.parametrize(("echo", "length"), [(echo, length) for echo, lengths in ECHOES.values()
                                               for length in lengths],
                         ids=[f"{name}-{length}" for name, (_, lengths) in ECHOES.items() for length in lengths])
def test_an_echo_beside_a_safe_fix_leaves_it_unsafe(tmp_path, echo, length):
    done, out = _repair(tmp_path, Trunk(echo), length)
    assert done.exit_code == 1 and not out.exists(), done.output
    assert "unsafe because" in done.output and "if the Python int" in done.output, done.output


class Counted(Trunk):
    """Lengths the caller gives, scaled by the baked length (speechbrain's relative lengths, helper 141)."""

    def forward(self, x, lengths):
        return super().forward(x) * (lengths.float() / (int(x.shape[1]) - 1))[:, None, None]


def test_lengths_given_and_scaled_by_the_length_are_an_echo(tmp_path):
    path, out = tmp_path / "m.onnx", tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Counted().eval(), (torch.randn(2, 12, 8), torch.tensor([12, 9])), str(path), dynamo=False,
                          opset_version=17, input_names=["x", "lengths"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 1: "T"}, "lengths": {0: "B"}, "y": {0: "B", 1: "T"}})
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])
    assert done.exit_code == 1 and not out.exists() and "unsafe because" in done.output, done.output


def test_a_band_of_the_scores_is_an_echo(tmp_path):
    done, out = _repair(tmp_path, Trunk(band=True), 8)  # 8 frames of 8 features: the scores are 8 x 8
    assert done.exit_code == 1 and not out.exists(), done.output
    assert "Trilu" in done.output, done.output


@pytest.mark.parametrize(("module", "length"), [(Trunk(), 8), (Trunk(lambda p, n: (p < 4).float()), 20)],
                         ids=["no-echo", "own-window-at-20"])
def test_without_an_echo_the_fix_stands_and_matches_pytorch(tmp_path, module, length):
    done, out = _repair(tmp_path, module, length)
    assert done.exit_code == 0, done.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch, frames in [(1, 5), (3, 11), (2, length), (2, 20)]:
        x = torch.randn(batch, frames, 8)
        with torch.no_grad():
            expected = module(x).numpy()
        np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, atol=1e-5)


class Pooled(Trunk):
    """A second use of the length as a cut along the frames, at 8 frames of 8 features: past the baked Reshape
    the frames' axis is a static 8, as long as a weight's dim (helper 141: read as features, written with exit 0)."""

    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, x):
        return self.head(super().forward(x), int(x.shape[1]))


class ChannelGate(Trunk):
    """The control: a Conformer's gate over 16 channels, `z[:, :8] * sigmoid(z[:, 8:])` of a Conv's output, at 16
    frames: its cut of the channels is the model's own (a Conv computes the axis), not the length."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(8, 16, 1)

    def forward(self, x):
        z = self.conv(super().forward(x).transpose(1, 2))
        return (z[:, :8] * torch.sigmoid(z[:, 8:])).transpose(1, 2)


def _export_pooled(tmp_path, module, length):
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, length, 8),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B"}})
    return path


@pytest.mark.parametrize("head", [lambda h, n: h[:, :n - 1].mean(1), lambda h, n: torch.roll(h, n // 2, 1).sum(-1)],
                         ids=["cut-last", "roll-half"])
def test_a_cut_along_frames_as_long_as_a_width_is_an_echo(tmp_path, head):
    path, out = _export_pooled(tmp_path, Pooled(head), 8), tmp_path / "fixed.onnx"
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])
    assert done.exit_code == 1 and not out.exists() and "if the Python int" in done.output, done.output


def test_a_gate_over_channels_as_many_as_the_frames_is_no_echo(tmp_path):
    module = ChannelGate()
    done, out = _repair(tmp_path, module, 16)
    assert done.exit_code == 0, done.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch, frames in [(1, 5), (3, 11), (2, 16), (2, 24)]:
        x = torch.randn(batch, frames, 8)
        with torch.no_grad():
            expected = module(x).numpy()
        np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, atol=1e-5)


class PairFrames(Trunk):
    """`h.reshape(B, T // 2, -1)`: a second Reshape of the same int, beside a -1, runs at every length and keeps
    the export's halves (helpers 140 and 141: written with exit 0)."""

    def forward(self, x):
        h = super().forward(x)
        g = h.reshape(x.shape[0], int(x.shape[1]) // 2, -1)
        return (g - g.mean(1, keepdim=True)).reshape(x.shape[0], -1, 8)


@pytest.mark.parametrize("length", [8, 16])
def test_an_entry_beside_a_minus_one_that_splits_the_frames_is_an_echo(tmp_path, length):
    done, out = _repair(tmp_path, PairFrames(), length)
    assert done.exit_code == 1 and not out.exists() and "beside a -1" in done.output, done.output
