"""Traps from red team 113: a baked size echoed where the echo check did not look, written with exit 0.

`t = int(x.shape[1])` pins a head split's Reshape (GF004 rebuilds the entry, safe) and is baked again: in a
covariance or Gram matrix summed by a MatMul (`hc.transpose(1, 2) @ hc / (t - 1)`, also along the batch,
VICReg's `z.T @ z / (N - 1)`, and over the frames of a strided Conv), in a resized length
(`interpolate(size=int(t * 1.5))`, or `scale_factor=16 / t`), a count of top frames (`topk(int(0.3 * t))`), a
log of the length (`h * log(t)`, `h / log2(t)`), `sqrt(t - 1)` after a Linear of a sum, and a temperature of the
length before a
softmax over it (attention pooling's `logits / sqrt(t - 1)`, log-length attention scaling `log(t) / log(512)`).
Each repair was written with exit 0 and differed from PyTorch at every other length (by 0.01 to 10); the
original fails there, so the proof had no reference. Now each is an echo (graphfix.analysis.echoes and
int_echoes) and `repair` refuses by default (exit 1, nothing written).

A resize to a fixed length along the baked length's axis (`interpolate(size=16)`, once red team 99's control)
is the same graph as `int(t * 0.43)`: refused by default, repaired with `--unsafe-fixes` where the user says it is
the model's own. The controls — a scale of the scores that is the model's own `1 / sqrt(d)`, a top-k over
features, a product over features, and (helper 115, refused by the first form of these reads) a ReZero gate on
`attn @ v`, values scaled before it, a contrastive softmax over the batch, a `log10` traced at 10 frames — are
still repaired (the suite's guard compares each written model with the module at other lengths). Helpers 115
and 117 added a covariance of the raw input (its length symbolic) and attention pooling of it.

`reshape(B, 8, int(H) * int(W))` pins H * W = 120 and neither size alone: it was not solved (exit 1 on a model
whose entry the element count determines); input sizes met only as their product are one length now
(graphfix.analysis.sizes.solve), rebuilt as H * W; a cut or step by a factor of it (the grid's first row,
`h[:, :, :W]`, helper 115) doubts the rebuild.
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


def _centred(h):
    return h - h.mean(1, keepdim=True)


def _attention_pooling(self, h, t):
    logits = (h @ self.lin.weight[0]) / math.sqrt(t - 1)
    return (logits.softmax(1)[:, :, None] * h).sum(1)


TRAPS = {
    "covariance-by-matmul": (lambda self, h, t: (_centred(h).transpose(1, 2) @ _centred(h) / (t - 1)).flatten(1),
                             False),
    "covariance-by-bmm": (lambda self, h, t: (torch.bmm(_centred(h).transpose(1, 2), _centred(h)) / (t - 1))
                          .flatten(1), False),
    "gram-over-length-and-features": (lambda self, h, t: (h.transpose(1, 2) @ h / (t * D)).flatten(1), False),
    "resize-to-one-and-a-half": (lambda self, h, t: functional.interpolate(h.transpose(1, 2), size=int(t * 1.5),
                                                                          mode="linear").sum(-1), False),
    # helper 115: the fixed 16 frames reached by a scale, `scale_factor=16 / t`
    "resize-by-a-scale-of-the-length": (lambda self, h, t: functional.interpolate(
        h.transpose(1, 2), scale_factor=16 / t, mode="linear").sum(-1), False),
    "top-30-percent-of-frames": (lambda self, h, t: h.topk(int(0.3 * t), dim=1).values.mean(1), False),
    "times-log-length": (lambda self, h, t: h * math.log(t), True),
    "over-log2-length": (lambda self, h, t: h / math.log2(t), True),
    "linear-of-sum-over-root": (lambda self, h, t: self.lin(h.sum(1)) / math.sqrt(t - 1), False),
    "attention-pooling-temperature": (_attention_pooling, False),
    "log-length-attention-scale": (lambda self, h, t: ((h @ h.transpose(1, 2)) * (math.log(t) / math.log(512)
                                                                                  / math.sqrt(D))).softmax(-1) @ h,
                                   True),
}


def _attention(h):
    return (h @ h.transpose(1, 2) / math.sqrt(D)).softmax(-1)


CONTROLS = {
    "own-scale-of-scores": (lambda self, h, t: _attention(h) @ h, True),
    # helper 115: attention's `attn @ v` averages (its weights sum to one), a softmax over the batch is no length's
    "gated-attention-output": (lambda self, h, t: (_attention(h) @ h) * 0.1, True),
    "scaled-values": (lambda self, h, t: _attention(h) @ (h * 0.8), True),
    "contrastive-over-the-batch": (lambda self, h, t: (h.mean(1) @ h.mean(1).T / 0.07).softmax(-1), False),
    "top-k-over-features": (lambda self, h, t: h.topk(3, dim=2).values, True),
    "resize-by-its-own-scale": (lambda self, h, t: functional.interpolate(h.transpose(1, 2), scale_factor=2.0,
                                                                         mode="linear").sum(-1), False),
    "product-over-features-scaled": (lambda self, h, t: h @ h.transpose(1, 2).sum(2, keepdim=True) / 5, True),
}
OWN_RESIZE = (lambda self, h, t: functional.interpolate(h.transpose(1, 2), size=16), False)


@pytest.mark.parametrize("trap", TRAPS.values(), ids=TRAPS)
def test_a_size_baked_beside_a_safe_fix_where_the_echo_check_did_not_look_makes_it_unsafe(tmp_path, trap):
    done, out = trapped(fixture_trap("Trap", *trap)(), tmp_path / "m.onnx", LENGTH)
    assert done.exit_code == 1 and not out.exists(), done.output
    assert "export at a size" in done.output and f"{LENGTH}" in done.output, done.output


@pytest.mark.parametrize("name", CONTROLS)
def test_a_models_own_scale_of_scores_top_k_or_product_is_no_echo(tmp_path, name):
    done, out = trapped(fixture_trap("Control", *CONTROLS[name])(), tmp_path / "m.onnx", LENGTH)
    assert done.exit_code == 0 and out.exists(), done.output


def test_a_log10_traced_at_ten_frames_is_no_echo(tmp_path):
    """`torch.log10` divides by ln 10, which is log(T) at 10 frames: every dB front end's own constant (helper
    115), not read as the length's log there."""
    control = fixture_trap("DecibelsAtTen", lambda self, h, t: torch.log10(h.abs() + 1), True)()
    done, out = trapped(control, tmp_path / "m.onnx", 10)
    assert done.exit_code == 0 and out.exists(), done.output


def test_a_fixed_resize_along_the_length_is_refused_by_default_and_repaired_when_the_user_says_so(tmp_path):
    """16 frames whatever the length, or int(t * 0.43): the graph does not say which."""
    module = fixture_trap("OwnResize", *OWN_RESIZE)()
    done, out = trapped(module, tmp_path / "m.onnx", LENGTH)
    assert done.exit_code == 1 and not out.exists(), done.output
    assert "its output size" in done.output and "the graph does not say whether 16" in done.output, done.output
    done, out = repair(tmp_path / "m.onnx", "--unsafe-fixes")
    assert done.exit_code == 0 and out.exists(), done.output  # the guard compares it with the module


class CovarianceOfTheInput(Heads):
    """The covariance of the raw input, whose length the graph leaves symbolic, `/ (t - 1)` (helper 115)."""

    def forward(self, x):
        h, t = self.heads(x)
        xc = x - x.mean(1, keepdim=True)
        return h.mean(1) + (xc.transpose(1, 2) @ xc / (t - 1)).sum(-1)


class PoolingOfTheInput(Heads):
    """Attention pooling of the raw input, whose length the graph leaves symbolic (`T`), with a temperature of
    the length, `/ sqrt(t - 1)` (helper 117: written with exit 0 once the rule read static axes only)."""

    def __init__(self):
        super().__init__()
        self.score = torch.nn.Linear(D, 1)

    def forward(self, x):
        h, t = self.heads(x)
        weights = torch.softmax(self.score(x).squeeze(-1) / math.sqrt(t - 1), dim=1)
        return (weights.unsqueeze(-1) * h).sum(1)


class CovarianceAlongTheBatch(torch.nn.Module):
    """VICReg's covariance: `z.T @ z / (N - 1)` with N = int(x.shape[0]) baked into a Reshape too."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(D, D)

    def forward(self, x):
        n = int(x.shape[0])
        z = self.lin(x).reshape(n, D)
        z = z - z.mean(0)
        return z.T @ z / (n - 1)


class GramOfConvFrames(torch.nn.Module):
    """Second-order pooling of a strided Conv's frames: L = int(h.shape[2]) in a Reshape and in `/ (L - 1)`."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(4, D, 3, stride=2)

    def forward(self, x):
        h = self.conv(x)
        frames = int(h.shape[2])
        h = h.reshape(h.shape[0], D, frames)
        return (h @ h.transpose(1, 2) / (frames - 1)).flatten(1)


@pytest.mark.parametrize(("module", "example", "axes"), [
    (CovarianceAlongTheBatch, (6, D), {"x": {0: "N"}}),
    (GramOfConvFrames, (2, 4, 27), {"x": {0: "B", 2: "T"}, "y": {0: "B"}}),
    (CovarianceOfTheInput, (2, 13, D), {"x": {0: "B", 1: "T"}, "y": {0: "B"}}),
    (PoolingOfTheInput, (2, 13, D), {"x": {0: "B", 1: "T"}, "y": {0: "B"}}),
], ids=["along-the-batch", "over-conv-frames", "of-the-input", "pooling-of-the-input"])
def test_a_covariance_or_temperature_of_a_baked_count_is_an_echo(tmp_path, module, example, axes):
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module().eval(), (torch.randn(*example),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes=axes)
    done, out = repair(path)
    assert done.exit_code == 1 and not out.exists(), done.output
    assert ("which is" in done.output and "- 1 for the size" in done.output) or "scales what a softmax" in \
        done.output, done.output


class FlattenedGrid(torch.nn.Module):
    """`reshape(B, 8, int(H) * int(W))`: the element count pins H * W = 120, neither size alone; then `tokens`."""

    def __init__(self, tokens=lambda h, width: h):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.tokens = torch.nn.Conv2d(3, 8, 3, padding=1), tokens

    def forward(self, x):
        width = int(x.shape[3])
        h = self.conv(x).reshape(x.shape[0], 8, int(x.shape[2]) * width)
        return self.tokens(h, width).amax(-1)


def _grid(tmp_path, module):
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, 3, 12, 10),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 2: "H", 3: "W"}, "y": {0: "B"}})
    return repair(path)


def test_input_sizes_met_only_as_their_product_are_one_length(tmp_path):
    """Red team 113: no fix (exit 1) where the element count determines the entry; the suite's guard compares the
    repaired model with the module at other sizes."""
    done, out = _grid(tmp_path, FlattenedGrid())
    assert done.exit_code == 0 and out.exists() and "applied GF004" in done.output, done.output


@pytest.mark.parametrize("tokens", [lambda h, width: h[:, :, :width], lambda h, width: h[:, :, ::width]],
                         ids=["first-row", "first-column"])
def test_a_factor_of_a_product_baked_beside_it_makes_the_rebuild_unsafe(tmp_path, tokens):
    """Helper 115: the first row (`h[:, :, :W]`) or column (`h[:, :, ::W]`) of the grid bakes W = 10, a factor of
    the 120 rebuilt as H * W; the rebuild was written with exit 0 and wrong at every other width."""
    done, out = _grid(tmp_path, FlattenedGrid(tokens))
    assert done.exit_code == 1 and not out.exists(), done.output
    assert "a factor of 120" in done.output, done.output


def test_a_heads_scale_that_is_a_factor_of_a_product_rebuilt_makes_the_rebuild_unsafe(tmp_path):
    """The grid's tokens scaled by `1 / sqrt(W)` before a softmax over the H * W tokens (helper 115's product traps,
    rerun at the end of stop 49): 1/sqrt(10) is also a head's scale, which the first form of that exemption let
    through, and the rebuild was written with exit 0, 0.001 off at 9 x 14."""
    done, out = _grid(tmp_path, FlattenedGrid(lambda h, width: (h / math.sqrt(width)).softmax(-1)))
    assert done.exit_code == 1 and not out.exists(), done.output
    assert "scales what a softmax over an axis of the size 120" in done.output, done.output
