"""Traps from red teams 40 and 41 that the echo check did not read: `t = int(x.shape[1])` pins a head split's
Reshape (GF004 rebuilds the entry, safe) and is baked again where no form of it was read: a sum over the length
scaled after a Linear (`Linear(h.sum(1)) / (t - 5)`: the walk from the scale to the sum ended at the MatMul), a
cumulative sum over the length scaled by `1 / (t - 5)`, a scale eight ops from its sum, and cuts at `t - 4`,
`t + 5`, `3 * t // 4` and `2 * t // 3`. Each was written with exit 0 and wrong at every other length; now the walk
passes a linear map (a MatMul or Gemm with a constant weight, and its bias), a CumSum is a sum along its axis, the
walk to a sum is 8 ops long, and a cut reads the size plus or minus up to 5, three quarters and two thirds of it
(graphfix.analysis.echoes): the repair refuses by default (exit 1, nothing written). A vector of one number
repeated is read too where it scales a sum once taken (test_traps_review40's uniform-vector trap, a strict xfail
before), not data before a sum (its LayerScale control). Helper 75 found the walk blind to a 3-D Linear (its
bias comes first) and to concatenated pooled statistics, and new false refusals: a classifier's temperature after
a Linear of a mean, and DETR's positions (a cumulative sum of a mask, times 2 pi): past a linear map and on
positions, only the forms are read now (n - 5 and n / (n - 1) among them), and a CumSum holds positions. The
controls, a model's own
numbers beside a Linear, a cumulative sum and a cut, are still repaired (the suite's guard compares each written
model with the module at other lengths).
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
from fixtures.baked_heads import Heads, export, repair, trapped  # noqa: E402  (imports torch)
from fixtures.baked_heads import trap as fixture_trap  # noqa: E402

pytestmark = pytest.mark.torch
LENGTH = 37


def _far(self, h, t):
    """Eight ops from the sum to the scale: two Linears (MatMul and Add each), a Reshape, a Transpose, another."""
    s = self.lin(self.lin(h.sum(1)))
    return s.reshape(-1, 2, 4).transpose(1, 2).reshape(-1, 8) * (1.0 / (t - 5))


TRAPS = {
    "linear-after-sum": (lambda self, h, t: self.lin(h.sum(1)) / (t - 5), False),
    "linear-after-mean": (lambda self, h, t: self.lin(h.mean(1)) * (t / (t - 1)), False),
    "cumsum": (lambda self, h, t: h.cumsum(1) * (1.0 / (t - 5)), True),
    "eight-ops-away": (_far, False),
    "cut-end-minus-4": (lambda self, h, t: h[:, : t - 4], True),
    "cut-end-plus-5": (lambda self, h, t: h[:, : t + 5].sum(1), False),
    "index-three-quarters": (lambda self, h, t: h[:, 3 * t // 4], False),
    "cut-start-two-thirds": (lambda self, h, t: h[:, 2 * t // 3:], True),
    # helper 75: a 3-D Linear is `Add(bias, MatMul)`, its data second; pooled statistics concatenated; an offset
    "linear-3d-after-sum": (lambda self, h, t: self.lin(h.sum(1, keepdim=True)) / (t - 5), False),
    "linear-after-cumsum": (lambda self, h, t: self.lin(h.cumsum(1)) / (t - 5), True),
    "pooled-statistics": (lambda self, h, t: torch.cat([h.sum(1), h.amax(1)], 1) / (t - 5), False),
    "sum-plus-offset": (lambda self, h, t: h.sum(1) + float(t - 5), False),
    # helper 76: past a nonlinearity or a softmax over the length, a period of it, a base-2 log
    "fourier-positions": (lambda self, h, t: h + torch.sin(torch.arange(h.shape[1], dtype=torch.float32)
                                                           * (2 * math.pi / t))[None, :, None], True),
    "log-mean-exp": (lambda self, h, t: torch.log(torch.exp(h).sum(1)) - math.log(t), False),
    "relu-then-unbiased": (lambda self, h, t: torch.relu(h.sum(1)) / (t - 1), False),
    "softmax-times-length": (lambda self, h, t: torch.softmax(h, 1) * (t - 1), True),
    "linear-over-log2": (lambda self, h, t: self.lin(h.sum(1)) / math.log2(t), False),
}
CONTROLS = {
    "linear-then-own-scale": (lambda self, h, t: self.lin(h) * 0.3, True),  # no sum over the length
    "own-cumsum-over-features": (lambda self, h, t: h.cumsum(2) * 0.3, True),
    "own-cut": (lambda self, h, t: h[:, 5:], True),  # 5 is 37 // 7, a seventh: not read
    "own-index": (lambda self, h, t: h[:, 7], False),
    "temperature-head": (lambda self, h, t: self.lin(h.mean(1)) / 0.07, False),  # helper 75: a classifier's own
    "positions-of-a-mask": (lambda self, h, t: h + _detr_positions(h), True),  # DETR's 2 pi over a cumulative sum
}


def _detr_positions(h):
    """DETR's normalized positions: a mask's cumulative sum over its last value, times 2 pi."""
    along = torch.ones_like(h[..., :1]).cumsum(1)
    return along / (along[:, -1:] + 1e-6) * 6.283185307179586


@pytest.mark.parametrize("trap", TRAPS.values(), ids=TRAPS)
def test_a_size_baked_beside_a_safe_fix_in_a_form_red_team_41_found_makes_it_unsafe(tmp_path, trap):
    done, out = trapped(fixture_trap("Trap", *trap)(), tmp_path / "m.onnx", LENGTH)
    assert done.exit_code == 1 and not out.exists(), done.output
    assert "which is" in done.output or f"scales a sum over an axis of the size {LENGTH}" in done.output, done.output


@pytest.mark.parametrize("name", CONTROLS)
def test_a_models_own_numbers_beside_a_linear_a_cumsum_or_a_cut_are_no_echo(tmp_path, name):
    done, out = trapped(fixture_trap("Control", *CONTROLS[name])(), tmp_path / "m.onnx", LENGTH)
    assert done.exit_code == 0 and out.exists(), done.output


class DetrPositions(Heads):
    """transformers' DetrSinePositionEmbedding (normalize=True) beside the GF004 trigger (helper 75)."""

    def __init__(self):
        super().__init__()
        from transformers.models.detr.modeling_detr import DetrSinePositionEmbedding

        self.pos = DetrSinePositionEmbedding(4, normalize=True)

    def forward(self, x):
        h, _ = self.heads(x)
        grid = h.reshape(h.shape[0], h.shape[1], 1, h.shape[2]).permute(0, 3, 1, 2)  # [B, D, T, 1]
        return grid + self.pos(grid.shape, grid.device, grid.dtype, torch.ones_like(grid[:, 0]))


def test_detr_s_sine_positions_are_no_echo_of_the_length(tmp_path):
    """Repaired (exit 0); the suite's guard compares the result with the module at other lengths."""
    pytest.importorskip("transformers")
    from fixtures.torchvision_models import register_ops

    register_ops()  # transformers imports torchvision, whose compiled ops the CPU torch does not load
    done, out = repair(export(DetrPositions(), tmp_path / "m.onnx", LENGTH, {0: "B", 2: "L"}))
    assert done.exit_code == 0 and out.exists(), done.output
