"""GF006 on a frame mask whose width is a Conv front end's length taken with a Python int:
`arange(int(h.shape[1])) < frame_lengths[:, None]` after transformers' Wav2Vec2 feature encoder (or a front end of
two strided Conv1d). The mask meets the frames where it masks them, `h * mask[..., None]`, which holds only where
`floor(S / 20) - 1` (the frames of S samples) is the export's 19. The size analysis solved no input size there
(400 to 419 samples all give 19 frames), so `graphfix.analysis.pinned` followed nothing: the model was refused
with no fix at all, even with `--unsafe-fixes`. The derived length is pinned now (through the mask's Unsqueeze),
and the width is rebuilt from a tensor upstream of the Mul that carries the frames; the fix stays unsafe (a
clamped arange fits the graph too). The proof starts at a size that gives the frames the graph baked (400
samples, the least, `ExportFact.least`), where the original runs and is compared in full: it guessed 50 before."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class FramesMasked(torch.nn.Module):
    """Frames of `encoder` masked by the lengths of the samples, the mask's width `int(h.shape[1])`; the masked mean
    over the frames."""

    def __init__(self, library: bool):
        super().__init__()
        torch.manual_seed(0)
        if library:
            from fixtures.library_models import import_transformers

            transformers = import_transformers()
            self.model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(
                hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=4))
        else:
            self.model = None
            self.convs = torch.nn.Sequential(torch.nn.Conv1d(1, 8, 10, stride=5), torch.nn.ReLU(),
                                             torch.nn.Conv1d(8, 8, 3, stride=4))

    def forward(self, wav, lengths):
        if self.model is not None:
            h = self.model(input_values=wav).last_hidden_state
            frames = self.model._get_feat_extract_output_lengths(lengths)
        else:
            h = self.convs(wav[:, None]).transpose(1, 2)
            frames = ((lengths - 10) // 5 + 1 - 3) // 4 + 1
        mask = torch.arange(int(h.shape[1]))[None, :] < frames[:, None]
        return (h * mask[..., None]).sum(1) / frames[:, None]


def _export(tmp_path, module):
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, 400), torch.tensor([400, 300])), str(path), dynamo=False,
                          opset_version=17, input_names=["wav", "lengths"], output_names=["y"],
                          dynamic_axes={"wav": {0: "B", 1: "S"}, "lengths": {0: "B"}})
    return path


@pytest.mark.parametrize("library", [True, False], ids=["wav2vec2", "two-convs"])
def test_a_frame_mask_of_a_conv_front_ends_length_is_rebuilt_with_unsafe_fixes(tmp_path, library):
    module, out = FramesMasked(library), tmp_path / "fixed.onnx"
    path = _export(tmp_path, module)
    refused = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])
    assert refused.exit_code == 1 and not out.exists(), refused.output
    assert "GF006" in refused.output and "as Range(0, Shape(" in refused.output, refused.output
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), "--unsafe-fixes"])
    assert done.exit_code == 0, done.output
    assert "original   at B=2 S=400: the export size" in done.output, done.output
    for batch, samples in [(1, 250), (3, 800), (2, 400)]:
        wav, lengths = torch.randn(batch, samples), torch.tensor([samples - 37 * i for i in range(batch)])
        with torch.no_grad():
            expected = module(wav, lengths).numpy()
        np.testing.assert_allclose(run(str(out), {"wav": wav.numpy(), "lengths": lengths.numpy()})[0], expected,
                                   rtol=1e-4, atol=1e-5)


class Subsampled(torch.nn.Module):
    """Wenet's Conv2dSubsampling (two stride-2 Conv2d: `((T - 1) // 2 - 1) // 2` frames) and a frame mask of the
    frames' width taken with a Python int."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, 2), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, 2),
                                        torch.nn.ReLU())
        self.out = torch.nn.Linear(12, 8)

    def forward(self, x, lengths):  # [B, T, 16]
        h = self.conv(x.unsqueeze(1))
        b, c, t, f = h.size()
        h = self.out(h.transpose(1, 2).contiguous().view(b, t, c * f))
        mask = torch.arange(int(h.shape[1]))[None, :] < (((lengths - 1) // 2 - 1) // 2)[:, None]
        return (h * mask[..., None]).sum(1)


def test_a_frame_mask_after_conv2d_subsampling_is_rebuilt_with_unsafe_fixes(tmp_path):
    module, path, out = Subsampled().eval(), tmp_path / "m.onnx", tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 41, 16), torch.tensor([41, 30])), str(path), dynamo=False,
                          opset_version=17, input_names=["x", "lengths"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 1: "T"}, "lengths": {0: "B"}})
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), "--unsafe-fixes"])
    assert done.exit_code == 0 and "T=39: the export size" in done.output, done.output  # 39 to 42 give 9 frames
    for batch, frames in [(1, 25), (3, 80), (2, 41)]:
        x, lengths = torch.randn(batch, frames, 16), torch.tensor([frames - 5 * i for i in range(batch)])
        with torch.no_grad():
            expected = module(x, lengths).numpy()
        np.testing.assert_allclose(run(str(out), {"x": x.numpy(), "lengths": lengths.numpy()})[0], expected,
                                   rtol=1e-4, atol=1e-5)
