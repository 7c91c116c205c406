"""Traps from red team 145: a safe fix lets a model run at other lengths while the same int, baked elsewhere in a
form the echo check did not read, stays at the export size (each written with exit 0, wrong by 3 to 84):

- an indicator as an exponent, `x ** (1 + (arange(T) >= 20))` traced at 12 frames: all ones there, shrunk by GF006
  as a uniform constant (an exponent was exempt from the doubt of an edge past the export size);
- GF007's `x[:, :T - 1] + x[:, 1:]` beside a mean spread again, `.expand(-1, T, -1)`: the Expand's entry (the
  echo check read a value an Expand spreads, not its shape; and GF007's fix named the end, 19, not the size, 20);
- GF007's difference, GF003's `h[mask] = 0` and GF004's head split, each beside positions `arange(int(T)) <
  lengths` counted over the frames (graphfix.analysis.position_echoes): the constant [0, ..., 19] that GF014
  reports. For GF003, whose model failed at every size and whose export length is not known, any constant
  positions that meet data.

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
    def forward(self, x, lengths):
        count = (torch.arange(_size(x, self.baked))[None] < lengths[:, None]).float().sum(1)
        return x.reshape(x.shape[0], int(x.shape[1]), 2, 2).transpose(1, 2) * count[:, None, None, None]


TRAPS = {  # the module, its export length, whether it takes lengths, the output's dynamic axes
    "indicator exponent": (PowIndicator, 12, False, {0: "B"}),
    "a mean spread again": (DiffThenSpread, 20, False, {0: "B"}),
    "difference beside positions": (DiffAndCount, 20, True, {0: "B"}),
    "masked beside positions": (MaskedAndCount, 20, True, {0: "B"}),
    "heads beside positions": (HeadsAndCount, 20, True, {0: "B", 2: "T"}),  # which entry is T: the declaration
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


@pytest.mark.parametrize("trap", TRAPS.values(), ids=TRAPS)
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
