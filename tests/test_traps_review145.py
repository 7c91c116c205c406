"""Traps from red team 145: a safe fix lets a model run at other lengths while the same int, baked elsewhere in a
form the echo check did not read, stays at the export size (each written with exit 0, wrong by 3 to 84):

- an indicator as an exponent, `x ** (1 + (arange(T) >= 20))` traced at 12 frames: all ones there, shrunk by GF006
  as a uniform constant (an exponent was exempt from the doubt of an edge past the export size);
- GF007's `x[:, :T - 1] + x[:, 1:]` beside a mean spread again, `.expand(-1, T, -1)`: the Expand's entry (the
  echo check read a value an Expand spreads, not its shape; and GF007's fix named the end, 19, not the size, 20);
- GF007's difference, GF003's `h[mask] = 0` and GF004's head split, each beside positions `arange(int(T)) <
  lengths` counted over the frames (graphfix.analysis.position_echoes): the constant [0, ..., 19] that GF014
  reports, and (helper 146) scaled, from 1 or reversed. Beside GF003, whose export length is not known, a known
  miss: reading any count refused `h[pad] = 0` beside a model's own 16 bins or a 32-token text mask.

Each is refused now; the same models with the second size traced (`x.shape[1]`, a Range) are repaired.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def _size(x, baked: bool):
    return int(x.shape[1]) if baked else x.shape[1]


class PowIndicator(torch.nn.Module):
    def __init__(self, baked=True):
        super().__init__()
        self.baked = baked

    def forward(self, x):
        return x ** (1.0 + (torch.arange(_size(x, self.baked)) >= 20).float()[:, None])


class DiffThenSpread(torch.nn.Module):
    def __init__(self, baked=True):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.baked = torch.nn.Linear(4, 4), baked

    def forward(self, x):
        t, h = int(x.shape[1]), self.lin(x)
        return (h[:, :t - 1] + h[:, 1:]).mean(1, keepdim=True).expand(-1, _size(x, self.baked), -1)


class DiffAndCount(torch.nn.Module):
    def __init__(self, baked=True):
        super().__init__()
        self.baked = baked

    def forward(self, x, lengths):
        t = int(x.shape[1])
        count = (torch.arange(_size(x, self.baked))[None] < lengths[:, None]).float().sum(1)
        return (x[:, :t - 1] + x[:, 1:]) * count[:, None, None]


class MaskedAndCount(DiffAndCount):
    def forward(self, x, lengths):
        h = x.clone()
        h[x[..., 0] > 0] = 0
        count = (torch.arange(_size(x, self.baked))[None] < lengths[:, None]).float().sum(1)
        return h * count[:, None, None]


class HeadsAndCount(DiffAndCount):
    positions = staticmethod(lambda n: torch.arange(n))

    def forward(self, x, lengths):
        count = (self.positions(_size(x, self.baked))[None] < lengths[:, None]).float().sum(1)
        return x.reshape(x.shape[0], int(x.shape[1]), 2, 2).transpose(1, 2) * count[:, None, None, None]


class HeadsAndSamples(HeadsAndCount):  # helper 146: positions in samples, a hop of 4
    positions = staticmethod(lambda n: torch.arange(n) * 4)


class HeadsAndReversed(HeadsAndCount):  # helper 146: `(T - 1) - arange(T)`
    positions = staticmethod(lambda n: (n - 1) - torch.arange(n))


class DiffAndCountFromOne(DiffAndCount):  # helper 146: `arange(1, T + 1) <= lengths`
    def forward(self, x, lengths):
        t = int(x.shape[1])
        count = (torch.arange(1, _size(x, self.baked) + 1)[None] <= lengths[:, None]).float().sum(1)
        return (x[:, :t - 1] + x[:, 1:]) * count[:, None, None]


TRAPS = {  # the module, its export length, whether it takes lengths, the output's dynamic axes
    "indicator exponent": (PowIndicator, 12, False, {0: "B"}),
    "a mean spread again": (DiffThenSpread, 20, False, {0: "B"}),
    "difference beside positions": (DiffAndCount, 20, True, {0: "B"}),
    "masked beside positions": pytest.param(
        (MaskedAndCount, 20, True, {0: "B"}), marks=pytest.mark.xfail(strict=True, reason=(
            "known miss: GF003's fix knows no export length, and reading any count of positions refused `h[pad] = "
            "0` beside every model's own bins or text mask (helper 146)"))),
    "heads beside positions": (HeadsAndCount, 20, True, {0: "B", 2: "T"}),  # which entry is T: the declaration
    "heads beside positions in samples": (HeadsAndSamples, 20, True, {0: "B", 2: "T"}),
    "heads beside reversed positions": (HeadsAndReversed, 20, True, {0: "B", 2: "T"}),
    "difference beside positions from 1": (DiffAndCountFromOne, 20, True, {0: "B"}),
}


def _feeds(batch, length, lengths):
    rng = np.random.default_rng(length)
    feeds = {"x": rng.standard_normal((batch, length, 4)).astype(np.float32)}
    if lengths:
        feeds["lengths"] = np.full((batch,), length - 1, np.int64)
    return feeds


def _repair(tmp_path, module, length, lengths, declared):
    path, out = tmp_path / "m.onnx", tmp_path / "fixed.onnx"
    args = tuple(torch.from_numpy(v) for v in _feeds(2, length, lengths).values())
    names = ["x", "lengths"] if lengths else ["x"]
    axes = {"x": {0: "B", 1: "T"}, "y": declared, **({"lengths": {0: "B"}} if lengths else {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=["y"], dynamic_axes=axes)
    return CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)]), out


@pytest.mark.parametrize("trap", TRAPS.values(), ids=TRAPS)
def test_a_size_baked_again_beside_a_safe_fix_is_not_written(tmp_path, trap):
    build, length, lengths, declared = trap
    done, out = _repair(tmp_path, build(), length, lengths, declared)
    assert done.exit_code == 1 and not out.exists(), done.output


@pytest.mark.parametrize("trap", [t.values[0] if hasattr(t, "marks") else t for t in TRAPS.values()], ids=TRAPS)
def test_the_same_model_with_that_size_traced_is_repaired_or_left_healthy(tmp_path, trap):
    build, length, lengths, declared = trap
    module = build(baked=False)
    done, out = _repair(tmp_path, module, length, lengths, declared)
    assert done.exit_code == 0, done.output
    for batch, size in ((1, 7), (3, length + 21), (2, length)):
        feeds = _feeds(batch, size, lengths)
        with torch.no_grad():
            want = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        np.testing.assert_allclose(run(str(out), feeds)[0], want, rtol=1e-4, atol=1e-4)


class MaskedSoftArgmax(torch.nn.Module):
    """Helper 146: a HuBERT-like `h[pad] = 0` (GF003 aligns it), then a soft-argmax over 16 bins of its own."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 16)

    def forward(self, x, lengths):
        h = self.lin(x)
        h[torch.arange(x.shape[1])[None, :] >= lengths[:, None]] = 0
        return (self.head(h).softmax(-1) * torch.arange(16, dtype=torch.float32)).sum(-1)


@pytest.mark.parametrize("length", [16, 20])
def test_a_model_s_own_bins_beside_gf003_s_fix_leave_it_repaired(tmp_path, length):
    """A count of positions beside GF003's fix, whose export length is not known, is not read (reading any count
    refused this at every export length); beside a fix that knows its size it is, where the count is a form of it."""
    module = MaskedSoftArgmax()
    done, out = _repair(tmp_path, module, length, True, {0: "B", 1: "T"})
    assert done.exit_code == 0 and "applied GF003" in done.output, done.output
    for batch, size in ((1, 7), (3, length + 21)):
        feeds = _feeds(batch, size, True)
        with torch.no_grad():
            want = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        np.testing.assert_allclose(run(str(out), feeds)[0], want, rtol=1e-4, atol=1e-4)
