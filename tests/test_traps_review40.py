"""Traps from red team 40 (helper 65's table): `t = int(x.shape[1])` traced at T = 12 pins a head split's Reshape
(GF004 rebuilds the entry, safe) and is baked again where the echo check read no form of it: an index or a cut at
`t // 4`, `t // 3` or `t - 3`, a step of `t // 3`, a sum scaled by `t / (t + 1)`, `1 / (t + 4)`, `exp(-t / 10)`,
`t ** -1.5` or `1 / log2(t)`, and a maximum over the length divided by `t - 1`. Each was written with exit 0 and
wrong at every other length. Now the cuts read a third and a quarter of the size and the size plus or minus up to
3, and a scale of a sum or maximum over the size is doubted whatever its value (graphfix.analysis.echoes): the
repair refuses by default (exit 1, nothing written). The controls, a model's own cut and scale that follow no size,
are still repaired.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from fixtures.baked_heads import D, Heads, export, repair  # noqa: E402  (imports torch)

pytestmark = pytest.mark.torch
LENGTH = 12


def _module(name: str, body, keeps_length: bool) -> type:
    """A Heads whose output is `body(h, t)`; with `keeps_length`, its output has a length axis (a cut of the
    input's, declared dynamic as L)."""
    return type(name, (Heads,), {"forward": lambda self, x: body(*self.heads(x)), "keeps_length": keeps_length})


def _export(module, path: Path) -> Path:
    return export(module, path, LENGTH, {0: "B", 1: "L"} if module.keeps_length else {0: "B"})


TRAPS = {
    "index-quarter": (lambda h, t: h[:, t // 4], False),
    "index-third": (lambda h, t: h[:, t // 3], False),
    "cut-end-minus-3": (lambda h, t: h[:, : t - 3], True),
    "cut-start-quarter": (lambda h, t: h[:, t // 4:], True),
    "step-third": pytest.param((lambda h, t: h[:, :: t // 3], True), marks=pytest.mark.xfail(
        strict=True, reason="known miss: a step reads no third or quarter of the size, which strided front ends "
                            "take as their own (x[:, 1::3] of 40 frames baked as 13: 3 is 13 // 4)")),
    "sum-times-t-over-t-plus-1": (lambda h, t: h.sum(1) * (t / (t + 1)), False),
    "sum-over-t-plus-4": (lambda h, t: h.sum(1) / (t + 4), False),
    "amax-over-t-minus-1": (lambda h, t: h.amax(1) / (t - 1), False),
    "sum-times-exp": (lambda h, t: h.sum(1) * math.exp(-t / 10), False),
    "sum-times-power": (lambda h, t: h.sum(1) * t ** -1.5, False),
    "sum-over-log2": (lambda h, t: h.sum(1) / math.log2(t), False),
    "pooled-mean-picked": (lambda h, t: torch.nn.functional.adaptive_avg_pool1d(h.transpose(1, 2), 1)[..., 0]
                           * (t / (t - 1)), False),  # helper 69: a GlobalAveragePool, then a Gather
    "einsum-sum": (lambda h, t: torch.einsum("btd->bd", h) * (1.0 / (t - 5)), False),  # helper 69
    "uniform-vector-scale": (lambda h, t: h.sum(1) * torch.full((D,), 1.0 / (t - 5)), False),  # once summed
}
CONTROLS = {
    "own-cut": (lambda h, t: h[:, 5:], True),  # 5 is no form of 12
    "own-index": (lambda h, t: h[:, -5], False),
    "sum-over-sqrt-width": (lambda h, t: h.sum(1) / math.sqrt(D), False),  # the summed value's own width
    "half-sum": (lambda h, t: h.sum(1) * 0.5, False),
    "layer-scale-at-init": (lambda h, t: (h + h * torch.full((D,), 1e-6)).mean(1), False),  # helper 70: timm's
    "scaled-feature-sum": (lambda h, t: h.sum(2) * 0.3, True),  # summed over the features, not the length
    "positions-scaled": (lambda h, t: h + (torch.arange(h.shape[1], dtype=torch.float32) * 0.3)[None, :, None],
                         True),  # a rotary table's linear scaling: positions, not a sum
}


@pytest.mark.parametrize("trap", TRAPS.values(), ids=TRAPS)
def test_a_size_baked_beside_a_safe_fix_in_a_form_red_team_40_found_makes_it_unsafe(tmp_path, trap):
    done, out = repair(_export(_module("Trap", *trap)(), tmp_path / "m.onnx"))
    assert done.exit_code == 1 and not out.exists(), done.output
    assert "which is" in done.output or "scales a sum over an axis of the size 12" in done.output, done.output


@pytest.mark.parametrize("body", [lambda h, t: h.sum(1) * (20 / t), lambda h, t: h.sum(1) / math.sqrt(2 * t),
                                  lambda h, t: h.amax(1) * (t / 20)], ids=["0.1", "1/20", "10"])
def test_a_scale_of_a_sum_that_is_a_round_number_at_the_export_length_is_still_doubted(tmp_path, body):
    """Helper 70: at 200 these are 0.1, 1 / 20 and 10, which a list of numbers of mathematics (a dB scale's 10 and
    20, and inverses) let through, written wrong with exit 0; no number is exempt now."""
    done, out = repair(export(_module("Round", body, False)(), tmp_path / "m.onnx", 200, {0: "B"}))
    assert done.exit_code == 1 and not out.exists(), done.output


@pytest.mark.parametrize("name", CONTROLS)
def test_a_models_own_cut_or_scale_is_no_echo_and_the_fix_stays_safe(tmp_path, name):
    """Repaired (exit 0); the suite's guard compares the result with the module at other lengths."""
    done, out = repair(_export(_module("Control", *CONTROLS[name])(), tmp_path / "m.onnx"))
    assert done.exit_code == 0 and out.exists(), done.output


class WhisperNorm(torch.nn.Module):
    """openai-whisper's log-mel normalisation (whisper/audio.py, after the STFT): log10 is exported as a Div by
    ln 10, and the maximum is taken over the whole spectrogram, length included."""

    def forward(self, mel_spec):
        log_spec = torch.clamp(mel_spec, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0


def _amplitude_to_db() -> torch.nn.Module:
    torchaudio = pytest.importorskip("torchaudio")
    return torchaudio.transforms.AmplitudeToDB(stype="power", top_db=80.0)


class FrontEnd(torch.nn.Module):
    """A dB front end, a conv head, and one baked size (the frame count, which GF004 rebuilds)."""

    def __init__(self, front: torch.nn.Module):
        super().__init__()
        torch.manual_seed(0)
        self.front, self.conv, self.head = front, torch.nn.Conv1d(80, 8, 3, padding=1), torch.nn.Linear(8, 5)

    def forward(self, mel):
        mel = mel.reshape(mel.shape[0], mel.shape[1], int(mel.shape[2]))
        return self.head(torch.relu(self.conv(self.front(mel))).mean(2))


@pytest.mark.parametrize("front", [WhisperNorm, _amplitude_to_db], ids=["whisper-log-mel", "torchaudio-db"])
def test_a_log_or_db_scale_beside_a_maximum_over_the_length_is_no_echo(tmp_path, front):
    """Helper 69: the scale of a sum whatever its value took log10's ln 10 and the dB scale, which meet a maximum
    over the length, for a function of it: repaired again (exit 0); the suite's guard compares the result with the
    module at other lengths."""
    path = tmp_path / "front.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(FrontEnd(front()).eval(), (torch.rand(2, 80, 128),), str(path), dynamo=False,
                          opset_version=17, input_names=["mel"], output_names=["y"],
                          dynamic_axes={"mel": {0: "B", 2: "T"}, "y": {0: "B"}})
    done, out = repair(path)
    assert done.exit_code == 0 and out.exists(), done.output


class SepFormerMasks(torch.nn.Module):
    """speechbrain's SepFormer mask net (Dual_Path_Model, its default chunks of K = 250 frames cut by P = 125)
    behind one baked size, the frame count (GF004 rebuilds it)."""

    def __init__(self):
        super().__init__()
        from speechbrain.lobes.models.dual_path import Dual_Path_Model, SBTransformerBlock

        torch.manual_seed(0)
        self.masks = Dual_Path_Model(20, 20, SBTransformerBlock(1, 20, 2, 32, dropout=0.0),
                                     SBTransformerBlock(1, 20, 2, 32, dropout=0.0), num_layers=1, norm="ln", K=250,
                                     num_spks=2, skip_around_intra=True, linear_layer_after_inter_intra=False)

    def forward(self, x):
        return self.masks(x.reshape(x.shape[0], x.shape[1], int(x.shape[2])))


@pytest.mark.parametrize(("frames", "repaired", "form"), [(257, True, ""), (128, False, "-(128 - 3)"),
                                                          (131, False, "131 - 6")])
def test_sepformer_s_chunk_cut_is_doubted_only_where_it_is_a_form_of_the_export_length(tmp_path, frames, repaired,
                                                                                        form):
    """The cost of reading n - 3 (helper 70): SepFormer's cut by 125 is 128 - 3, so at 128 frames the fix is
    doubted and the message says to export at another length; and of reading a tail's start up to a quarter of the
    length before its end (`h[:, T - 6:]`, red team 99): 125 is 131 - 6. At 257 it is repaired (exit 0, and the
    suite's guard compares the result with the module at other lengths)."""
    pytest.importorskip("speechbrain")
    path = tmp_path / "sepformer.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(SepFormerMasks().eval(), (torch.randn(2, 20, frames),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["masks"],
                          dynamic_axes={"x": {0: "B", 2: "L"}, "masks": {1: "B", 3: "L"}})
    done, out = repair(path)
    assert (done.exit_code, out.exists()) == ((0, True) if repaired else (1, False)), done.output
    assert repaired or (form in done.output and "export at a size" in done.output), done.output
