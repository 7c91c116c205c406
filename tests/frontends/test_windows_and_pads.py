"""Sizes past a threshold the export left in the graph, from speech front ends (helper 98):

- ESPnet's relative positions (`RelPositionalEncoding`, as Wenet, icefall and FireRedASR use it) slice
  `pe[c - T + 1 : c + T]` from a table that `extend_pe` grows in Python. Run once before the export (or traced) at
  more frames than its `max_len`, the table is folded at 2 T0 - 1 rows: past T0 frames the start wraps, and the
  export runs wrong at T0 + 1 (a fragment of one row broadcasts) and fails past it, where PyTorch grows the table.
  The window read only `c - s : c + s` (DeBERTa's), so its rows bounded the probe: "no findings", `repair` exit 0.
  Given the export size, a window whose span is c there was grown by the export and is probed past (by two rows:
  one broadcasts); a table of the model's own `max_len` (5000) bounds the length as before, and gets no error.
- facebookresearch/denoiser's Demucs pads to a valid length with `math.ceil`, traced as `Pad(4004 - N)` at
  N = 4000, N read from the normalised audio: no threshold above 512 was read, nor one met by a size read from an
  inner tensor's Shape. The output stops at 4004 samples past it; a probe there shows it (GF000), `repair` exit 1.

The models follow the libraries' code (small, random weights); transformers' own wav2vec2-Conformer, whose relative
positions are ESPnet's, is in test_transformers_sweep.py.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import run

from graphfix.cli import cli
from graphfix.validate import ValidationOptions, probe_sizes

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]


class RelPositionalEncoding(nn.Module):
    """espnet/nets/pytorch_backend/transformer/embedding.py's RelPositionalEncoding (its table grows in Python)."""

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        self.d_model, self.xscale, self.pe = d_model, math.sqrt(d_model), None
        self.extend_pe(torch.tensor(0.0).expand(1, max_len))

    def extend_pe(self, x):
        if self.pe is not None and self.pe.size(1) >= x.size(1) * 2 - 1:
            return
        positive, negative = torch.zeros(x.size(1), self.d_model), torch.zeros(x.size(1), self.d_model)
        position = torch.arange(0, x.size(1), dtype=torch.float32).unsqueeze(1)
        div = torch.exp(torch.arange(0, self.d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / self.d_model))
        positive[:, 0::2], positive[:, 1::2] = torch.sin(position * div), torch.cos(position * div)
        negative[:, 0::2], negative[:, 1::2] = torch.sin(-1 * position * div), torch.cos(-1 * position * div)
        self.pe = torch.cat([torch.flip(positive, [0]).unsqueeze(0), negative[1:].unsqueeze(0)], dim=1)

    def forward(self, x):
        self.extend_pe(x)
        centre = self.pe.size(1) // 2
        return x * self.xscale, self.pe[:, centre - x.size(1) + 1: centre + x.size(1)]


class RelPositionAttention(nn.Module):
    """ESPnet's RelPositionMultiHeadedAttention (new style: `rel_shift` keeps T of the 2 T - 1 columns)."""

    def __init__(self, heads: int, width: int):
        super().__init__()
        self.h, self.d_k = heads, width // heads
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        self.pos = nn.Linear(width, width, bias=False)
        self.u, self.w = (nn.Parameter(torch.randn(heads, self.d_k) * .1) for _ in range(2))

    @staticmethod
    def rel_shift(x):
        padded = torch.cat([torch.zeros((*x.size()[:3], 1), dtype=x.dtype), x], dim=-1)
        padded = padded.view(*x.size()[:2], x.size(3) + 1, x.size(2))
        return padded[:, :, 1:].view_as(x)[:, :, :, : x.size(-1) // 2 + 1]

    def forward(self, x, pos_emb):
        n = x.size(0)
        q = self.q(x).view(n, -1, self.h, self.d_k)
        k, v = (f(x).view(n, -1, self.h, self.d_k).transpose(1, 2) for f in (self.k, self.v))
        p = self.pos(pos_emb).view(1, -1, self.h, self.d_k).transpose(1, 2)
        ac = (q + self.u).transpose(1, 2) @ k.transpose(-2, -1)
        bd = self.rel_shift((q + self.w).transpose(1, 2) @ p.transpose(-2, -1))
        scores = torch.softmax((ac + bd) / math.sqrt(self.d_k), -1)
        return self.o((scores @ v).transpose(1, 2).reshape(n, -1, self.h * self.d_k))


class RelEncoder(nn.Module):
    def __init__(self, max_len: int):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.pos, self.att, self.norm = (nn.Linear(20, 32), RelPositionalEncoding(32, max_len),
                                                   RelPositionAttention(4, 32), nn.LayerNorm(32))

    def forward(self, features):
        x, pos = self.pos(self.inp(features))
        return self.norm(x + self.att(x, pos))


def _export(module, example, path, axes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=17,
                          input_names=[next(iter(axes))], output_names=["y"], dynamic_axes=axes)
    return path


def _relative(path, max_len: int):
    module, example = RelEncoder(max_len).eval(), torch.randn(2, 97, 20)
    with torch.no_grad():
        module(example)  # the user's check before exporting: it grows the table to 2 * 97 - 1 rows
    return module, _export(module, example, path, {"features": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}})


def _matches(path, module, name, shapes) -> bool:
    for shape in shapes:
        x = np.random.default_rng(shape[1]).standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        try:
            got, = run(str(path), {name: x})
        except Exception:
            return False
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-4):
            return False
    return True


def test_an_espnet_table_grown_at_the_export_length_is_probed_past_it(tmp_path):
    module, path = _relative(tmp_path / "grown.onnx", max_len=8)
    assert _matches(path, module, "features", [(2, 97, 20), (1, 61, 20)])
    assert not _matches(path, module, "features", [(2, 98, 20)])  # runs, wrong: one row broadcasts
    trace = ["--trace-shape", "features=2x97x20"]
    sizes = probe_sizes(onnx.load(str(path)), ValidationOptions(trace_sizes={"B": 2, "T": 97}))
    assert any(binding["T"] >= 99 for binding in sizes), sizes
    runner = CliRunner()
    diagnosed = runner.invoke(cli, ["diagnose", str(path), *trace])
    assert diagnosed.exit_code == 1 and "extend_pe" in diagnosed.output, diagnosed.output
    repaired = runner.invoke(cli, ["repair", str(path), "-o", str(tmp_path / "out.onnx"), *trace])
    assert repaired.exit_code == 1 and "FAILS" in repaired.output, repaired.output


def test_an_espnet_table_of_the_model_s_own_max_len_bounds_the_length(tmp_path):
    """5000 rows a side, ESPnet's default: no probe past them, no error (as before). Nor a probe at the 4999 its
    slice starts from: with thresholds read past 512, one went to 5000 frames, past the run budget with 4 layers
    (helper 100), and a healthy encoder was refused."""
    module, path = _relative(tmp_path / "own.onnx", max_len=5000)
    trace = ["--trace-shape", "features=2x97x20"]
    for options in (ValidationOptions(), ValidationOptions(trace_sizes={"B": 2, "T": 97})):
        assert all(binding["T"] < 4999 for binding in probe_sizes(onnx.load(str(path)), options))
    runner = CliRunner()
    for command in (["diagnose", str(path)], ["repair", str(path), "-o", str(tmp_path / "out.onnx")]):
        done = runner.invoke(cli, [*command, *trace])
        assert done.exit_code == 0 and "FAILS" not in done.output and "error" not in done.output, done.output
    assert _matches(tmp_path / "out.onnx", module, "features", [(2, 97, 20), (1, 61, 20), (2, 130, 20)])


class Demucs(nn.Module):
    """facebookresearch/denoiser's Demucs in small (depth 2, kernel 8, stride 4, an LSTM between), its input
    normalised and padded to a valid length computed with `math.ceil` in Python."""

    def __init__(self, depth=2, kernel_size=8, stride=4, hidden=8):
        super().__init__()
        torch.manual_seed(0)
        self.depth, self.kernel_size, self.stride, self.floor = depth, kernel_size, stride, 1e-3
        self.encoder, self.decoder = nn.ModuleList(), nn.ModuleList()
        chin, chout = 1, 1
        for index in range(depth):
            self.encoder.append(nn.Sequential(nn.Conv1d(chin, hidden, kernel_size, stride), nn.ReLU(),
                                              nn.Conv1d(hidden, hidden * 2, 1), nn.GLU(1)))
            decode = [nn.Conv1d(hidden, 2 * hidden, 1), nn.GLU(1), nn.ConvTranspose1d(hidden, chout, kernel_size,
                                                                                       stride)]
            self.decoder.insert(0, nn.Sequential(*decode, *([nn.ReLU()] if index > 0 else [])))
            chout, chin, hidden = hidden, hidden, min(2 * hidden, 64)
        self.lstm = nn.LSTM(chin, chin, 1)

    def valid_length(self, length):
        for _ in range(self.depth):
            length = max(math.ceil((length - self.kernel_size) / self.stride) + 1, 1)
        for _ in range(self.depth):
            length = (length - 1) * self.stride + self.kernel_size
        return int(length)

    def forward(self, mix):
        mix = mix.unsqueeze(1)
        std = mix.mean(dim=1, keepdim=True).std(dim=-1, keepdim=True)
        mix = mix / (self.floor + std)
        length = mix.shape[-1]
        x = functional.pad(mix, (0, self.valid_length(length) - length))
        skips = []
        for encode in self.encoder:
            x = encode(x)
            skips.append(x)
        x, _ = self.lstm(x.permute(2, 0, 1))
        x = x.permute(1, 2, 0)
        for decode in self.decoder:
            x = decode(x + skips.pop(-1)[..., :x.shape[-1]])
        return (std * x[..., :length]).squeeze(1)


def test_demucs_s_pad_to_a_valid_length_is_probed_past_its_threshold(tmp_path):
    module = Demucs().eval()
    path = _export(module, torch.randn(2, 4000), tmp_path / "demucs.onnx", {"mix": {0: "B", 1: "N"},
                                                                            "y": {0: "B", 1: "N"}})
    assert _matches(path, module, "mix", [(2, 4000)]) and not _matches(path, module, "mix", [(2, 5333)])
    sizes = probe_sizes(onnx.load(str(path)), ValidationOptions())
    assert any(binding["N"] > 4004 for binding in sizes), sizes
    runner = CliRunner()
    diagnosed = runner.invoke(cli, ["diagnose", str(path)])
    assert diagnosed.exit_code == 1 and "GF000" in diagnosed.output and "4004" in diagnosed.output, \
        diagnosed.output
    repaired = runner.invoke(cli, ["repair", str(path), "-o", str(tmp_path / "out.onnx")])
    assert repaired.exit_code == 1, repaired.output


class FramesPaddedToAMultiple(nn.Module):
    """Demucs's pad to a valid length, on the frames of a stride-4 Conv: `Pad(1024 - F)` at 4000 samples."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(1, 8, 4, stride=4)

    def forward(self, mix):
        h = self.conv(mix.unsqueeze(1))
        length = h.shape[-1]
        return functional.pad(h, (0, math.ceil(length / 64) * 64 - length)).cumsum(-1)[..., :length].mean(1)


def test_a_threshold_met_by_frames_is_crossed_in_samples(tmp_path):
    """1024 frames are 4096 samples: the probe went to 1025 samples, 256 frames, far from the pad's turn into a cut
    (helper 100). The threshold is taken to the input's units through the size analysis."""
    path = _export(FramesPaddedToAMultiple(), torch.randn(2, 4000), tmp_path / "frames.onnx",
                   {"mix": {0: "B", 1: "N"}, "y": {0: "B", 1: "F"}})
    sizes = probe_sizes(onnx.load(str(path)), ValidationOptions(trace_sizes={"B": 2, "N": 4000}))
    assert any(binding["N"] > 4096 for binding in sizes), sizes
