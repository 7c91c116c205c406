"""GF004 on lengths derived through a strided front end (#22 item 2): a Reshape that bakes the frame count of a
Conv front end, `floor((T - 1) / 2) + 1` at T = 40, is solved for that length and rebuilt from the tensor that
carries it. Real torch.nn code (TransformerEncoderLayer / TransformerDecoderLayer, whose attention the TorchScript
exporter bakes), random weights, dynamic batch, time and tokens.

- the FireRedASR-shaped AED: Conv1d(stride 2) front end, encoder, decoder with cross-attention to the frames;
  repaired by default, then split with `extract` into an encoder and a decoder that each match PyTorch;
- Wenet/ESPnet-style Conv2dSubsampling (two stride-2 Conv2d, `((T - 1) // 2 - 1) // 2`), batch first;
- frames kept by a strided slice (`x[:, ::2]`, `x[:, 1::3]`, after a flip): `ceil((T - s) / k)` frames, odd and
  even export lengths.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from conftest import run

import graphfix
from graphfix.core.rule import Safety
from graphfix.io.loading import load_model
from graphfix.surgery.extract import extract

torch = pytest.importorskip("torch")
nn = torch.nn
pytestmark = [pytest.mark.torch, pytest.mark.slow]

FEATURES, DIM, HEADS, VOCAB = 16, 32, 4, 40
SIZES = ((1, 23, 3), (2, 40, 5), (3, 64, 9))  # (batch, time, tokens): batch 1, the export size, longer


class AED(nn.Module):
    """FireRedASR's layout in small: a strided Conv1d over the features, then attention encoder and decoder."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(FEATURES, DIM, 3, stride=2, padding=1)  # frames = floor((T - 1) / 2) + 1
        self.encoder_layer = nn.TransformerEncoderLayer(DIM, HEADS, 64, dropout=0.0)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.decoder_layer = nn.TransformerDecoderLayer(DIM, HEADS, 64, dropout=0.0)
        self.proj = nn.Linear(DIM, VOCAB)

    def encode(self, features):
        return self.encoder_layer(self.conv(features.transpose(1, 2)).permute(2, 0, 1))  # [frames, batch, DIM]

    def decode(self, memory, tokens):
        return self.proj(self.decoder_layer(self.embed(tokens).transpose(0, 1), memory)).transpose(0, 1)

    def forward(self, features, tokens):
        return self.decode(self.encode(features), tokens)


class SkippedFrames(nn.Module):
    """A frame-rate reduction by slicing, then a batch-first encoder layer (its attention bakes the frames)."""

    def __init__(self, start: int, step: int, flip: bool):
        super().__init__()
        self.start, self.step, self.flip = start, step, flip
        self.proj = nn.Linear(FEATURES, DIM)
        self.layer = nn.TransformerEncoderLayer(DIM, HEADS, 64, dropout=0.0, batch_first=True)

    def forward(self, features):
        h = self.proj(features.flip(1) if self.flip else features)
        return self.layer(h[:, self.start::self.step])


class Conv2dSubsampling(nn.Module):
    """Wenet's front end: two 3x3 stride-2 Conv2d over (time, features), then a batch-first encoder layer."""

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(1, 4, 3, 2), nn.ReLU(), nn.Conv2d(4, 4, 3, 2), nn.ReLU())
        self.out = nn.Linear(4 * 3, DIM)  # 16 features -> 7 -> 3
        self.layer = nn.TransformerEncoderLayer(DIM, HEADS, 64, dropout=0.0, batch_first=True)

    def forward(self, features):
        h = self.convs(features.unsqueeze(1))  # [batch, 4, frames, 3]
        b, c, t, f = h.size()
        return self.layer(self.out(h.transpose(1, 2).reshape(b, t, c * f)))


def feeds(batch, time, tokens=None):
    rng = np.random.default_rng(batch * 100 + time)
    x = rng.standard_normal((batch, time, FEATURES)).astype(np.float32)
    return x if tokens is None else (x, rng.integers(0, VOCAB, (batch, tokens), dtype=np.int64))


def export(module, example, path, names, axes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=17, input_names=names[:-1],
                          output_names=names[-1:], dynamic_axes=axes)
    return str(path)


@pytest.fixture(scope="module")
def aed(tmp_path_factory):
    torch.manual_seed(0)
    module = AED().eval()
    x, t = feeds(2, 40, 5)
    path = export(module, (torch.from_numpy(x), torch.from_numpy(t)), tmp_path_factory.mktemp("aed") / "aed.onnx",
                  ["features", "tokens", "logits"], {"features": {0: "batch", 1: "time"},
                                                     "tokens": {0: "batch", 1: "tokens"},
                                                     "logits": {0: "batch", 1: "tokens"}})
    return module, path


def test_frames_of_the_front_end_are_solved_in_encoder_and_cross_attention(aed):
    _, path = aed
    findings = [f for f in graphfix.diagnose(path, static=True) if f.rule == "GF004"]
    frames = [f for f in findings if "floor(time/2 - 1/2) + 1" in f.message]
    assert {f.nodes[0].split("/")[1] for f in frames} == {"encoder_layer", "decoder_layer"}  # self- and cross-attn
    assert any("multihead_attn" in f.nodes[0] for f in frames)
    assert len(findings) == 6 and all(f.fix is not None and f.fix.safety is Safety.SAFE for f in findings)
    assert all("=20" in f.message for f in frames)  # 20 frames at the export's 40 time steps


def test_aed_is_repaired_by_default_and_split_into_parts_that_match_pytorch(aed, tmp_path):
    module, path = aed
    result = graphfix.repair(path, output=str(tmp_path / "fixed.onnx"))
    assert result.status == "repaired", result.error
    for batch, time, tokens in SIZES:
        x, t = feeds(batch, time, tokens)
        with torch.no_grad():
            want = module(torch.from_numpy(x), torch.from_numpy(t)).numpy()
        np.testing.assert_allclose(run(str(tmp_path / "fixed.onnx"), {"features": x, "tokens": t})[0], want,
                                   rtol=1e-4, atol=1e-5)
    fixed = onnx.load(str(tmp_path / "fixed.onnx"))
    boundary = [o for n in fixed.graph.node if n.name.startswith("/encoder_layer/") for o in n.output][-1]
    encoder = extract(load_model(tmp_path / "fixed.onnx"), ["features"], [boundary], tmp_path / "encoder.onnx",
                      rename={boundary: "memory"})
    decoder = extract(load_model(tmp_path / "fixed.onnx"), [boundary, "tokens"], ["logits"],
                      tmp_path / "decoder.onnx", rename={boundary: "memory"})
    assert encoder.status == decoder.status == "written", (encoder.error, decoder.error)
    for batch, time, tokens in SIZES[1:]:
        x, t = feeds(batch, time, tokens)
        with torch.no_grad():
            memory = module.encode(torch.from_numpy(x))
            logits = module.decode(memory, torch.from_numpy(t)).numpy()
        (got,) = run(str(tmp_path / "encoder.onnx"), {"features": x})
        np.testing.assert_allclose(got, memory.numpy(), rtol=1e-4, atol=1e-5)
        (got,) = run(str(tmp_path / "decoder.onnx"), {"memory": memory.numpy(), "tokens": t})
        np.testing.assert_allclose(got, logits, rtol=1e-4, atol=1e-5)


def test_conv2d_subsampling_frames_are_repaired_by_default(tmp_path):
    torch.manual_seed(0)
    module = Conv2dSubsampling().eval()
    path = export(module, (torch.from_numpy(feeds(2, 40)),), tmp_path / "subsampling.onnx", ["features", "h"],
                  {"features": {0: "batch", 1: "time"}, "h": {0: "batch", 1: "frames"}})
    with pytest.raises(Exception, match="reshape"):
        run(path, {"features": feeds(1, 23)})  # the export as it is: 9 frames baked
    _solved_and_repaired(module, path, tmp_path)


@pytest.mark.parametrize(("start", "step", "flip", "length"), [(0, 2, False, 40), (0, 2, False, 41), (1, 3, False, 40),
                                                               (0, 2, True, 39)])
def test_frames_kept_by_a_strided_slice_are_repaired_by_default(tmp_path, start, step, flip, length):
    torch.manual_seed(0)
    module = SkippedFrames(start, step, flip).eval()
    path = export(module, (torch.from_numpy(feeds(2, length)),), tmp_path / "skipped.onnx", ["features", "h"],
                  {"features": {0: "batch", 1: "time"}, "h": {0: "batch", 1: "frames"}})
    with pytest.raises(Exception, match=r"(?i)reshape"):
        run(path, {"features": feeds(1, 23)})  # the export as it is: its frame count baked
    _solved_and_repaired(module, path, tmp_path)


def _solved_and_repaired(module, path, tmp_path):
    """GF004 solves every baked frame count (SAFE), and the repair matches the module at SIZES."""
    findings = [f for f in graphfix.diagnose(path, static=True) if f.rule == "GF004"]
    assert findings and all("floor(" in f.message and f.fix.safety is Safety.SAFE for f in findings)
    result = graphfix.repair(path, output=str(tmp_path / "fixed.onnx"))
    assert result.status == "repaired", result.error
    for batch, time, _ in SIZES:
        x = feeds(batch, time)
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(run(str(tmp_path / "fixed.onnx"), {"features": x})[0], want, rtol=1e-4,
                                   atol=1e-5)
