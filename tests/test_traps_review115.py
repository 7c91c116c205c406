"""Traps left from helper 115: a baked size that reaches a softmax or a log of a sum where the echo check did not
follow it, written with exit 0.

`t = int(x.shape[1])` pins a head split's Reshape (GF004 rebuilds the entry, safe) and is baked again: as a
count of frames that scales a softmax's weights (`softmax(logits, 1) * (t / 2)`), as a temperature of the length
followed by a bias or by ALiBi's distances before the softmax (`logits / sqrt(t - 1) + b`), as log-length
attention's scale of the queries rather than of the scores (`q * (log(t) / log(512))`), as log-mean-exp pooling's
`logsumexp(h, 1) - 0.5 * log(t)`, and as a resize of the raw input, whose length the graph leaves symbolic
(`interpolate(x, size=int(1.5 * t))`). Each repair differed from PyTorch at every other length (by 0.02 to 4);
the original fails there, so the proof had no reference. Now each is an echo (graphfix.analysis.echoes,
sums_near and int_echoes) and `repair` refuses by default.

The controls are still repaired (the suite's guard compares each written model with the module at other
lengths): a model's own scale of scores followed by a bias or by ALiBi's distances, nn.MultiheadAttention
returning its weights (it scales the queries by a head's `8 ** -0.5`, a width the graph does not show there), a
log-sum-exp over features shifted by the model's own number. Helper 120 attacked these reads: an Einsum of the
queries and keys, a shifted log-softmax and a resize of the input by a scale were still written with exit 0 (now
refused); a mask's fill where a product made the mask, a head's scale written as a Div or beside a bias (Gemma-2's
`224 ** -0.5`) and a guard against log(0) were refused by them (now repaired). Still missed, as before these
reads: a temperature of scores that no product computed (`-|h_i - h_j|^2 / sqrt(T - 1) + b`), a power of the
weights, a softmax written by hand.
"""

from __future__ import annotations

import math
import warnings

import pytest

torch = pytest.importorskip("torch")
from fixtures.baked_heads import D, Heads, repair, trapped  # noqa: E402  (imports torch)
from fixtures.baked_heads import trap as fixture_trap  # noqa: E402
from torch.nn import functional  # noqa: E402

pytestmark = pytest.mark.torch
LENGTH = 37


def _pooled(weights, h):
    return (weights[:, :, None] * h).sum(1)


def _distances(h):
    """ALiBi's: |i - j| over the length, from the (dynamic) shape."""
    positions = torch.arange(h.shape[1])
    return (positions[None, :] - positions[:, None]).abs().float()


def _pairs(h):
    """A mask of pairs of frames made by a product: `bmm(m[:, :, None], m[:, None, :])`."""
    m = (h[..., 0] > 0).float()
    return torch.bmm(m[:, :, None], m[:, None, :])


TRAPS = {
    "softmax-weights-times-half-the-length": (
        lambda self, h, t: _pooled((h @ self.lin.weight[0]).softmax(1) * (t / 2), h), False),
    "temperature-then-bias": (
        lambda self, h, t: _pooled(((h @ self.lin.weight[0]) / math.sqrt(t - 1) + self.lin.bias[:1]).softmax(1), h),
        False),
    "log-length-scale-then-distances": (
        lambda self, h, t: ((h @ h.transpose(1, 2)) * (math.log(t) / math.log(512) / math.sqrt(D))
                            - 0.5 * _distances(h)).softmax(-1) @ h, True),
    "log-length-scale-of-queries": (
        lambda self, h, t: ((h * (math.log(t) / math.log(512))) @ h.transpose(1, 2) / math.sqrt(D)).softmax(-1) @ h,
        True),
    "log-mean-exp": (lambda self, h, t: torch.logsumexp(self.lin(h), 1) - 0.5 * math.log(t), False),
    # helper 120: the queries' product with the keys as an Einsum, a log-softmax's shift
    "log-length-scale-of-queries-by-einsum": (
        lambda self, h, t: torch.einsum("btd,bsd->bts", h * (math.log(t) / math.log(512)), h).softmax(-1) @ h, True),
    "log-softmax-shifted-by-the-length": (
        lambda self, h, t: (h @ self.lin.weight[0]).log_softmax(1) + math.log(t / 2), True),
}
CONTROLS = {
    "own-scale-then-bias": (
        lambda self, h, t: ((h @ h.transpose(1, 2)) / math.sqrt(D) + self.lin.bias[:1]).softmax(-1) @ h, True),
    "own-scale-then-distances": (
        lambda self, h, t: ((h @ h.transpose(1, 2)) / math.sqrt(D) - 0.25 * _distances(h)).softmax(-1) @ h, True),
    "log-sum-exp-over-features-shifted": (lambda self, h, t: torch.logsumexp(h, 2) - 0.3, True),
    # helper 120, refused by this file's first reads: a mask made by a product, a head's scale whose width the
    # graph does not show (as a Div, and Gemma-2's `224 ** -0.5` before a bias), a guard against log(0)
    "mask-fill-from-a-product": (lambda self, h, t: (h @ h.transpose(1, 2) / math.sqrt(D) + (1 - _pairs(h))
                                                     * -10000.0).softmax(-1) @ h, True),
    "queries-over-the-root-of-a-head": (
        lambda self, h, t: ((h / math.sqrt(24)) @ h.transpose(1, 2)).softmax(-1) @ h, True),
    "head-scale-then-bias": (
        lambda self, h, t: ((h @ h.transpose(1, 2)) * 224 ** -0.5 + self.lin.bias[:1]).softmax(-1) @ h, True),
    "log-sum-exp-guarded": (lambda self, h, t: torch.logsumexp(self.lin(h), 1) + 1e-6, False),
}


@pytest.mark.parametrize("trap", TRAPS.values(), ids=TRAPS)
def test_a_size_baked_into_what_a_softmax_or_a_log_of_a_sum_meets_makes_the_fix_unsafe(tmp_path, trap):
    done, out = trapped(fixture_trap("Trap", *trap)(), tmp_path / "m.onnx", LENGTH)
    assert done.exit_code == 1 and not out.exists(), done.output
    assert "export at a size" in done.output and f"{LENGTH}" in done.output, done.output


@pytest.mark.parametrize("name", CONTROLS)
def test_a_models_own_scale_bias_or_shift_is_no_echo(tmp_path, name):
    done, out = trapped(fixture_trap("Control", *CONTROLS[name])(), tmp_path / "m.onnx", LENGTH)
    assert done.exit_code == 0 and out.exists(), done.output


class ResizedInput(Heads):
    """The raw input resized to `int(1.5 * t)` frames: along `T`, which the graph leaves symbolic, a fixed 55."""

    def forward(self, x):
        h, t = self.heads(x)
        return h.mean(1) + functional.interpolate(x.transpose(1, 2), size=int(1.5 * t)).mean(-1)


class ResizedInputByScale(Heads):
    """The raw input resized by `scale_factor=20 / t` (helper 120): 20 frames whatever its length."""

    def forward(self, x):
        h, t = self.heads(x)
        return h.mean(1) + functional.interpolate(x.transpose(1, 2), scale_factor=20 / t, mode="linear").mean(-1)


class AttentionWeights(Heads):
    """nn.MultiheadAttention returning its averaged weights: its queries scaled by 8 ** -0.5 on their way to a
    softmax over the length."""

    def __init__(self):
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(D, 1, batch_first=True)

    def forward(self, x):
        h, _ = self.heads(x)
        out, weights = self.attention(h, h, h, need_weights=True)
        return out + weights.sum(-1, keepdim=True)


def _export(module, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, LENGTH, D),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}})
    return path


@pytest.mark.parametrize(("module", "said"), [(ResizedInput, "along the axis 'T'"),
                                              (ResizedInputByScale, "resized by 0.540541")],
                         ids=["to-a-size", "by-a-scale"])
def test_a_resize_of_the_input_to_a_number_of_frames_along_its_named_length_is_an_echo(tmp_path, module, said):
    """A fixed 55 (or 20) frames and `int(1.5 * t)` (`20 / t`) leave the same graph along `T`: refused by
    default."""
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module().eval(), (torch.randn(2, LENGTH, D),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B"}})
    done, out = repair(path)
    assert done.exit_code == 1 and not out.exists(), done.output
    assert said in done.output, done.output


def test_multihead_attentions_own_scale_of_its_queries_is_no_echo(tmp_path):
    done, out = repair(_export(AttentionWeights(), tmp_path / "m.onnx"))
    assert done.exit_code == 0 and out.exists(), done.output
