"""GF006: constants whose export-size values the graph does not determine (red team 35). Each was repaired by
default and written with exit 0, wrong at every other length:

- a uniform constant of a value computed from the size: `ones(T, 1) / (T - 1)` (1/7 at T=8), `full((T, 1),
  log(T) / log(4))`, and along the batch alone `full((B, 1), float(T))` (8.0, the export T): any value but 0 and
  1 may be some f(T) there;
- a sinusoid whose positions are scaled by a factor that follows the length (rotary over `arange(T) * 4 / T`);
- a table's first rows `pe[:T]`, which at the export length N are also `pe[N - T : N]` (right-aligned positions).

Now each fix is unsafe and names the alternative: the default repair exits 1 and writes nothing, and
`--unsafe-fixes` still repairs the simplest construction right. 0 and 1 stay safe (an initial state
`zeros(int(B), H)`), and so does a table of the integer positions.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run

import graphfix
from graphfix.cli import cli

torch = pytest.importorskip("torch")
nn = torch.nn
pytestmark = pytest.mark.torch

VALUE_FROM_SIZES = "a value computed from the sizes (1/(T-1), log T, T, ...) gives it at the export size"
WIDTH = 8  # features (a rotary table needs several frequencies to be told from learned values)
SIZES = ((2, 8), (1, 5), (3, 11), (2, 20))  # (batch, time): the export size, shorter, longer


def _rotate_half(x):
    a, b = x.chunk(2, -1)
    return torch.cat([-b, a], -1)


class UnbiasedStatsPool(nn.Module):
    """Mean and unbiased std over time, the 1/(T-1) weights built with int(T)."""

    def forward(self, x):
        t = int(x.shape[1])
        m = x.mean(1, keepdim=True)
        return torch.cat([m.squeeze(1), ((x - m) ** 2 * (torch.ones(t, 1) / (t - 1))).sum(1).sqrt()], -1)


class LogNScaledAttention(nn.Module):
    """Attention scores scaled by log(T) / log(4) per query, built with int(T)."""

    def forward(self, x):
        t = int(x.shape[1])
        scale = torch.full((t, 1), math.log(t) / math.log(4))
        return ((x @ x.transpose(1, 2)) * scale).softmax(-1) @ x


class DefaultLengthsMean(nn.Module):
    """No lengths given: every sample is full length, `full((B, 1), float(T))` (only batch dims met)."""

    def forward(self, x):
        b, t = int(x.shape[0]), int(x.shape[1])
        return x.sum(1) / torch.full((b, 1), float(t))


class HalfWeights(nn.Module):
    """A fixed weight 0.5 per frame built with int(T): the simplest construction, which --unsafe-fixes applies."""

    def forward(self, x):
        return x * torch.full((int(x.shape[1]), 1), 0.5)


class InitialState(nn.Module):
    """An initial state `zeros(int(B), H)` added to a pooled sequence: 0 is no value of a size (safe)."""

    def forward(self, x):
        return x.mean(1) + torch.zeros(int(x.shape[0]), WIDTH)


class Rope(nn.Module):
    """A rotary embedding over positions `arange(T) * scale` (a float), or `* (4 / T)` where scale is None."""

    def __init__(self, scale: float | None):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        t, d = int(x.shape[1]), WIDTH
        inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
        positions = torch.arange(t).float() * (4.0 / t if self.scale is None else self.scale)
        angles = torch.cat([torch.outer(positions, inv_freq)] * 2, -1)
        return x * angles.cos() + _rotate_half(x) * angles.sin()


class Positions(nn.Module):
    """A learned table of 32 rows, also read whole (a global bias), cut with int(T): the current T frames at the end
    of a context of 16 (`pe[16 - T : 16]`), or at its start (`pe[:T]`, the simplest)."""

    def __init__(self, right_aligned: bool):
        super().__init__()
        self.pe, self.right = nn.Parameter(torch.randn(32, WIDTH)), right_aligned

    def forward(self, x):
        t = int(x.shape[1])
        return x + (self.pe[16 - t:16] if self.right else self.pe[:t]) + self.pe.mean(0)


def _export(module, path, time=8):
    torch.manual_seed(0)
    example = torch.randn(2, time, WIDTH)
    out_axes = {0: "B", 1: "T"} if module.eval()(example).ndim == 3 else {0: "B"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"}, "y": out_axes})
    return path


def _matches_torch(module, path, sizes=SIZES) -> None:
    for batch, time in sizes:
        x = np.random.default_rng(batch * 100 + time).standard_normal((batch, time, WIDTH)).astype(np.float32)
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(run(str(path), {"x": x})[0], expected, rtol=1e-4, atol=1e-5)


def _unsafe_and_refused(module, tmp_path, why: str, time: int = 8) -> list:
    """The GF006 findings, after checking each names `why` in its unsafe fix and the default repair exits 1 and
    writes nothing."""
    path = _export(module, tmp_path / "model.onnx", time)
    found = [f for f in graphfix.diagnose(str(path), static=True) if f.rule == "GF006"]
    assert found and all(f.fix is not None and f.fix.safety.value == "unsafe" for f in found), found
    assert all(why in f.fix.reason for f in found), [f.fix.reason for f in found]
    out = tmp_path / "out.onnx"
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])
    assert done.exit_code == 1 and not out.exists(), done.output
    return found


def _repaired(module, tmp_path, *options: str, time: int = 8):
    path = _export(module, tmp_path / "model.onnx", time)
    out = tmp_path / "out.onnx"
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), *options])
    assert done.exit_code == 0 and "GF006" in done.output, done.output
    return out


@pytest.mark.parametrize("module", [UnbiasedStatsPool, LogNScaledAttention, DefaultLengthsMean],
                         ids=["one-over-T-minus-1", "log-T", "batch-full-of-T"])
def test_a_uniform_value_computed_from_a_size_is_not_repaired_by_default(module, tmp_path):
    _unsafe_and_refused(module(), tmp_path, VALUE_FROM_SIZES)


def test_a_fixed_uniform_value_is_repaired_with_unsafe_fixes(tmp_path):
    module = HalfWeights()
    _unsafe_and_refused(module, tmp_path, VALUE_FROM_SIZES)
    _matches_torch(module, _repaired(module, tmp_path, "--unsafe-fixes"))


def test_an_initial_state_of_zeros_along_the_batch_is_repaired_by_default(tmp_path):
    module = InitialState()
    path = _export(module, tmp_path / "state.onnx")
    (finding,) = [f for f in graphfix.diagnose(str(path), static=True) if f.rule == "GF006"]
    assert finding.fix.safety.value == "safe", finding.fix.reason
    _matches_torch(module, _repaired(module, tmp_path), sizes=((2, 8), (1, 5), (5, 11)))


def test_rotary_positions_scaled_by_the_length_are_not_repaired_by_default(tmp_path):
    _unsafe_and_refused(Rope(scale=None), tmp_path, "positions scaled by a factor")


def test_rotary_positions_at_a_fixed_scale_are_repaired_with_unsafe_fixes(tmp_path):
    """Linear rotary scaling (positions / 2): the simplest construction, applied only when asked."""
    module = Rope(scale=0.5)
    _unsafe_and_refused(module, tmp_path, "may follow the length (arange(T) * c / T")
    _matches_torch(module, _repaired(module, tmp_path, "--unsafe-fixes"))


def test_rotary_over_the_integer_positions_is_repaired_with_unsafe_fixes(tmp_path):
    """The standard table at the export length is also that of capped or restarting positions, or of frequencies
    that change past a longer length (helper 54): unsafe; built with --unsafe-fixes, it is this module's."""
    module = Rope(scale=1.0)
    _unsafe_and_refused(module, tmp_path, "dynamic NTK rotary scaling")
    _matches_torch(module, _repaired(module, tmp_path, "--unsafe-fixes"))


def test_a_right_aligned_table_cut_at_its_end_is_not_repaired_by_default(tmp_path):
    """`pe[16 - T : 16]` exported at T=16 is `pe[0:16]`: the prefix rebuild was wrong at every other length."""
    _unsafe_and_refused(Positions(right_aligned=True), tmp_path, "`pe[N - T : N]` with N = 16", time=16)


def test_a_table_prefix_is_repaired_with_unsafe_fixes(tmp_path):
    module = Positions(right_aligned=False)
    _unsafe_and_refused(module, tmp_path, "`pe[N - T : N]` with N = 8")
    _matches_torch(module, _repaired(module, tmp_path, "--unsafe-fixes"), sizes=((2, 8), (1, 5), (3, 11), (2, 30)))
