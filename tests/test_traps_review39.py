"""Traps from red team 39 (helper 62): one Python int, `t = int(x.shape[1])` traced at T = 12, pins a head split's
Reshape (GF004 rebuilds the entry, safe) and is also baked into a float of a form the echo check did not read:
positions normalised by `t - 1` (and CoordConv's `* (2 / (t - 1)) - 1`), a sum scaled by `1 / (t - 2)`, frames
scaled by `t ** -0.25`, and `log(t + 3)` added to a mean. Each repair was written with exit 0 and wrong at every
other length (max abs error 0.14 to 2.4). Now each fix is unsafe (graphfix.analysis.echoes) and the repair refuses
by default (exit 1, nothing written); the control, a model's own constant beside positions, is still repaired.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from fixtures.baked_heads import Heads, export, repair  # noqa: E402  (imports torch)

nn = torch.nn
pytestmark = pytest.mark.torch


class NormalisedPositions(Heads):
    def forward(self, x):
        h, t = self.heads(x)
        return h + (torch.arange(x.shape[1], dtype=torch.float32) / (t - 1))[None, :, None]


class CoordChannel(Heads):
    def forward(self, x):
        h, t = self.heads(x)
        return h + (torch.arange(x.shape[1], dtype=torch.float32) * (2.0 / (t - 1)) - 1.0)[None, :, None]


class SumOverTMinus2(Heads):
    keeps_length = False

    def forward(self, x):
        h, t = self.heads(x)
        return h.sum(1) * (1.0 / (t - 2))


class QuarterRoot(Heads):
    def forward(self, x):
        h, t = self.heads(x)
        return h * t ** -0.25


class LogLength(Heads):
    keeps_length = False

    def forward(self, x):
        h, t = self.heads(x)
        return h.mean(1) + math.log(t + 3)


class OwnScaleOfPositions(Heads):
    """The control: positions scaled by the model's own 1 / 7.5, no form of 12."""

    def forward(self, x):
        h, _ = self.heads(x)
        return h + (torch.arange(x.shape[1], dtype=torch.float32) / 7.5)[None, :, None]


def _export(module: nn.Module, path: Path) -> Path:
    return export(module, path, 12, {0: "B", 1: "T"} if getattr(module, "keeps_length", True) else {0: "B"})


QUARTER_ROOT_MISSED = pytest.mark.xfail(strict=True, reason="known miss: n ** -0.25 is read beside sums and "
                                        "positions only, since SDPA's export scales queries and keys by "
                                        "head_dim ** -0.25 and BERT traced at 64 tokens of 64-wide heads was refused")


@pytest.mark.parametrize("module", [NormalisedPositions, CoordChannel, SumOverTMinus2,
                                    pytest.param(QuarterRoot, marks=QUARTER_ROOT_MISSED), LogLength],
                         ids=lambda m: getattr(m, "__name__", str(m)))
def test_a_size_baked_into_a_float_beside_a_safe_fix_makes_it_unsafe(tmp_path, module):
    path = _export(module(), tmp_path / "m.onnx")
    done, out = repair(path)
    assert done.exit_code == 1 and not out.exists(), done.output
    assert "for the size 12" in done.output, done.output  # says which constant (the fix, or each candidate's)


def test_a_models_own_scale_of_positions_is_no_echo_and_the_fix_stays_safe(tmp_path):
    """Repaired (exit 0); the suite's guard compares the result with the module at other lengths."""
    done, out = repair(_export(OwnScaleOfPositions(), tmp_path / "m.onnx"))
    assert done.exit_code == 0 and out.exists(), done.output


@pytest.mark.parametrize(("length", "width", "attention"), [(64, 64, "sdpa"), (256, 16, "eager")],
                         ids=["sdpa-64-of-64", "eager-256-of-16"])
def test_bert_s_attention_scale_is_no_echo_of_the_length(length, width, attention, tmp_path):
    """transformers' BERT behind a wrapper that bakes the length once (`ids.reshape(B, int(T))`, a fix GF004
    makes): SDPA's export scales queries and keys by head_dim ** -0.25 (0.354 at 64: 64 ** -0.25 for 64 tokens
    too), eager attention divides by sqrt(16) (0.25: 256 ** -0.25 for 256 tokens). Both were refused (helper 65);
    repaired now, and the suite's guard compares the result with the module at other lengths."""
    from fixtures.library_models import import_transformers

    transformers = import_transformers()
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=2 * width, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=4 * width, max_position_embeddings=512,
                                     attn_implementation=attention)
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, ids):
            return self.bert(input_ids=ids.reshape(ids.shape[0], int(ids.shape[1]))).last_hidden_state

    path = tmp_path / "bert.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapped().eval(), (torch.randint(0, 100, (2, length)),), str(path), dynamo=False,
                          opset_version=17, input_names=["ids"], output_names=["y"],
                          dynamic_axes={"ids": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}})
    done, out = repair(path)
    assert done.exit_code == 0 and out.exists(), done.output
