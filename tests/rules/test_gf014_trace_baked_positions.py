"""GF014: positions as long as an input was at export, compared with values (helper 129: transformers' Wav2Vec2
given the mask `arange(int(wav.shape[1]))[None] < lengths[:, None]`, which it only sums; nothing failed, and
`repair` wrote it unchanged with exit 0, 5.1 off at twice the export length, `--trace-shape` or not). A warning
where `--trace-shape` or the graph says the length (the positions may be the model's own: helper 130's traps),
none where nothing does; the unsafe fix computes the positions from the input's length, and the proof takes the
original for no reference at other lengths (it keeps the export's positions there)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

TRACE = ["--trace-shape", "wav=2x1600"]


class MaskedWav2Vec2(torch.nn.Module):
    """transformers' Wav2Vec2 (random weights, a small config) given a mask of `width`: "int" (baked), "traced"
    (healthy) or "own" (the model's own 2000 positions, no export size)."""

    def __init__(self, width: str = "int"):
        super().__init__()
        from fixtures.library_models import import_transformers

        transformers = import_transformers()
        torch.manual_seed(0)
        self.width, self.model = width, transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16, 16),
            conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
            feat_extract_norm="layer", do_stable_layer_norm=True, apply_spec_augment=False))

    def forward(self, wav, lengths):
        width = {"int": int(wav.shape[1]), "traced": wav.shape[1], "own": 2000}[self.width]
        positions = torch.arange(width)[None, :]
        if self.width == "own":
            positions = positions[:, : wav.shape[1]]  # the model's own table, cut to the input
        return self.model(wav, attention_mask=(positions < lengths[:, None]).long()).last_hidden_state


def _export(tmp_path, module):
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, 1600), torch.tensor([1600, 1100])), str(path),
                          dynamo=False, opset_version=17, input_names=["wav", "lengths"], output_names=["y"],
                          dynamic_axes={"wav": {0: "B", 1: "S"}, "lengths": {0: "B"}})
    return path


def test_a_mask_of_positions_as_long_as_the_given_export_length_is_a_warning_and_fixed_on_request(tmp_path):
    module, out = MaskedWav2Vec2(), tmp_path / "fixed.onnx"
    path = _export(tmp_path, module)
    found = CliRunner().invoke(cli, ["diagnose", str(path), *TRACE])
    assert found.exit_code == 0 and "warning GF014" in found.output and "0 to 1599" in found.output, found.output
    assert "GF014" not in CliRunner().invoke(cli, ["diagnose", str(path)]).output  # nothing says the length
    kept = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), *TRACE])
    assert kept.exit_code == 0 and "unchanged" in kept.output and "warning GF014" in kept.output, kept.output
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), "--unsafe-fixes", *TRACE])
    assert done.exit_code == 0 and "applied GF014" in done.output, done.output
    for batch, samples, lengths in [(2, 1600, [1600, 1100]), (1, 900, [900]), (1, 3200, [3200]),
                                    (3, 2400, [2400, 2000, 700])]:
        wav, lengths = torch.randn(batch, samples), torch.tensor(lengths)
        with torch.no_grad():
            expected = module(wav, lengths).numpy()
        np.testing.assert_allclose(run(str(out), {"wav": wav.numpy(), "lengths": lengths.numpy()})[0], expected,
                                   rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("width", ["traced", "own"])
def test_positions_from_the_traced_length_or_the_models_own_get_no_finding(tmp_path, width):
    found = CliRunner().invoke(cli, ["diagnose", str(_export(tmp_path, MaskedWav2Vec2(width))), *TRACE])
    assert "GF014" not in found.output, found.output


class Thresholds(torch.nn.Module):
    """A trap (helper 130): a model's own 16 ordinal thresholds, `score > arange(16)`, exported at 16 frames."""

    def forward(self, x):
        score = x.sum(-1, keepdim=True)  # [B, T, 1]
        return (score > torch.arange(16)).float().sum(-1)


def test_a_models_own_positions_as_long_as_the_export_are_only_a_warning(tmp_path):
    path, out = tmp_path / "m.onnx", tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Thresholds(), (torch.randn(2, 16, 4),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"}})
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), "--trace-shape", "x=2x16x4"])
    assert done.exit_code == 0 and "unchanged" in done.output, done.output
