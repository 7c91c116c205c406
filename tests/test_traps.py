"""The traps of issue #21, each exported from PyTorch code (TorchScript exporter, dynamic axes) and repaired with
the real `graphfix repair` command.

Whatever the command writes with exit 0 is run in onnxruntime and compared with PyTorch at three sizes, batch 1
and a length longer than the export length among them: a wrong model written with exit 0 fails the test, whatever
the case expects. A case that must be refused asserts exit 1 and nothing written; one that must be repaired asserts
exit 0 and the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from fixtures.torch_models import padded_encoder
from torch import nn

from graphfix.cli import cli
from graphfix.validate.references import EXACT

WRITTEN, REFUSED = "written", "refused"


def export(module: nn.Module, example: tuple, names: list[str], axes: dict, path: Path) -> Path:
    """TorchScript exporter, opset 17, `axes` dynamic (the output's under the name "output")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=["output"], dynamic_axes=axes)
    return path


def torch_output(module: nn.Module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return module(*(torch.from_numpy(v) for v in feeds.values())).numpy()


def repaired(path: Path, module: nn.Module, make, sizes, *args, expect: str):
    """Run `graphfix repair`; compare what it wrote with exit 0 with PyTorch at `sizes` (make(batch, length) ->
    feeds, in the module's argument order); then check `expect`."""
    out = path.with_name(f"{path.stem}_fixed.onnx")
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), *args], catch_exceptions=False)
    assert done.exit_code in (0, 1), done.output
    if done.exit_code == 0 and out.exists():
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        for batch, length in sizes:
            feeds = make(batch, length)
            (got,) = session.run(None, feeds)
            np.testing.assert_allclose(got, torch_output(module, feeds), rtol=1e-4, atol=1e-5, err_msg=(
                f"written with exit 0, but wrong at batch {batch}, length {length}:\n{done.output}"))
    if expect == WRITTEN:
        assert done.exit_code == 0 and out.exists(), done.output
    elif expect == REFUSED:
        assert done.exit_code == 1 and not out.exists(), done.output
    return done, out


def floats(shape_of):
    def make(batch: int, length: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(batch * 100 + length)
        return {"x": rng.standard_normal(shape_of(batch, length)).astype(np.float32)}
    return make


# --- wrong repairs: never written wrong -------------------------------------------------------------------------


class GroupMax(nn.Module):
    """`x.reshape(B, int(T) // 3, 12).amax(-1)`: 12 is the model's own; traced at T=6 the 2 is T // 3."""

    def forward(self, x):
        return x.reshape(x.shape[0], int(x.shape[1]) // 3, 12).amax(-1)


class GroupMaxOf4(nn.Module):
    """`x.reshape(B, int(T) // 4, 16).amax(-1)`: traced at T=8 the 2 is T // 4, and the model takes only multiples
    of 4; 16 = 2*T there too, and a reshape with 2*T runs at every length."""

    def forward(self, x):
        return x.reshape(x.shape[0], int(x.shape[1]) // 4, 16).amax(-1)


class SlidingWindow(nn.Module):
    """A causal mask of width 4 built with `int(T)`: traced at T=4 it equals `tril`, which is wrong at T > 4."""

    def forward(self, x):
        steps = int(x.shape[1])
        i, j = torch.arange(steps)[:, None], torch.arange(steps)[None, :]
        mask = (i >= j) & (i - j < 4)
        scores = (x @ x.transpose(1, 2)).masked_fill(~mask, float("-inf"))
        return scores.softmax(-1) @ x


class LearnedGain(nn.Module):
    """A learned gain on an input whose last dim was declared dynamic: two values, no structure to regrow."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor([[0.3, -1.2]]))

    def forward(self, x):
        return x * self.gain


def test_a_reshape_of_the_models_own_constant_is_never_written_wrong(tmp_path):
    path = export(GroupMax(), (torch.randn(2, 6, 4),), ["x"], {"x": {0: "B", 1: "T"}, "output": {0: "B", 1: "G"}},
                  tmp_path / "group_max.onnx")
    # the output declared [B, G] says the 2 varies: only T // 3 keeps it varying, so the fix is determined
    repaired(path, GroupMax(), floats(lambda b, t: (b, t, 4)), [(1, 3), (2, 6), (3, 12)], expect=WRITTEN)


def test_a_reshape_whose_output_declares_nothing_is_ambiguous(tmp_path):
    """Without `G` the output is declared [B, 2]: the exporter writes the traced size of every axis left out of
    `dynamic_axes`, so that 2 is no promise. T // 3 and 2*T both survive, and nothing is applied."""
    path = export(GroupMax(), (torch.randn(2, 6, 4),), ["x"], {"x": {0: "B", 1: "T"}}, tmp_path / "group_max.onnx")
    done, _ = repaired(path, GroupMax(), floats(lambda b, t: (b, t, 4)), [(1, 3), (2, 6), (3, 12)],
                       expect=REFUSED)
    assert "ambiguous" in done.output and "T // 3" in done.output and "2*T" in done.output


def test_a_candidate_that_fails_only_where_the_original_fails_too_is_not_ruled_out(tmp_path):
    """Found while adding probes: every probe off the multiples of 4 (T = 5, 11) failed T // 4, as PyTorch fails
    there too, and the proof wrote 2*T, "the only one it accepts", wrong at every other length with exit 0."""
    path = export(GroupMaxOf4(), (torch.randn(2, 8, 4),), ["x"], {"x": {0: "B", 1: "T"}}, tmp_path / "group4.onnx")
    done, _ = repaired(path, GroupMaxOf4(), floats(lambda b, t: (b, t, 4)), [(1, 4), (2, 8), (3, 16)],
                       expect=REFUSED)
    assert "ambiguous" in done.output and "fails only at sizes where the original fails too" in done.output
    assert "T // 4" in done.output and "2*T" in done.output


def test_a_sliding_window_traced_at_its_width_is_not_rebuilt_as_tril(tmp_path):
    path = export(SlidingWindow(), (torch.randn(2, 4, 8),), ["x"], {"x": {0: "B", 1: "T"}, "output": {0: "B", 1: "T"}},
                  tmp_path / "window.onnx")
    done, _ = repaired(path, SlidingWindow(), floats(lambda b, t: (b, t, 8)), [(1, 3), (2, 4), (3, 9)],
                       expect=REFUSED)
    assert "not written" in done.output


@pytest.mark.parametrize("args", [(), ("--unsafe-fixes",)], ids=["default", "unsafe"])
def test_a_learned_gain_is_never_regrown(tmp_path, args):
    path = export(LearnedGain(), (torch.randn(2, 2),), ["x"], {"x": {0: "B", 1: "W"}, "output": {0: "B", 1: "W"}},
                  tmp_path / "gain.onnx")
    done, _ = repaired(path, LearnedGain(), floats(lambda b, w: (b, 2)), [(1, 2), (2, 2), (3, 2)], *args,
                       expect=REFUSED)
    assert "not written" in done.output


# --- right repairs: written, and right --------------------------------------------------------------------------


class PaddedLinear(nn.Module):
    """`h = linear(x); h[pad] = 0` on a plain tensor [B, T, 32]: the mask's time axis lines up with the 32
    features only at T = 32, where the original runs by coincidence."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(32, 32)

    def forward(self, x, pad):
        h = self.linear(x)
        h[pad] = 0
        return h


def padded_inputs(batch: int, length: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 100 + length)
    pad = np.zeros((batch, length), dtype=bool)
    pad[1:, length - 2:] = True  # right padding on all but the first row
    return {"x": rng.standard_normal((batch, length, 32)).astype(np.float32), "pad": pad}


def test_h_pad_zero_on_a_plain_tensor_of_32_features_is_repaired(tmp_path):
    example = tuple(torch.from_numpy(v) for v in padded_inputs(2, 7).values())
    axes = {"x": {0: "B", 1: "T"}, "pad": {0: "B", 1: "T"}, "output": {0: "B", 1: "T"}}
    path = export(PaddedLinear(), example, ["x", "pad"], axes, tmp_path / "padded.onnx")
    done, _ = repaired(path, PaddedLinear(), padded_inputs, [(1, 5), (2, 7), (3, 40)], expect=WRITTEN)
    assert "applied GF003" in done.output and "T=32 " not in done.output  # no probe at the hidden size


def test_h_pad_zero_on_a_bert_encoder_of_hidden_size_32_is_repaired(tmp_path):
    case = padded_encoder("bert")  # transformers BertModel: hidden 32, 2 layers, random weights; exported at (2, 15)
    path = tmp_path / "bert.onnx"
    case.export(path)
    done, _ = repaired(path, case.module, case.inputs, [(1, 5), (2, 15), (3, 40)], expect=WRITTEN)
    assert "applied GF003" in done.output


class Qkv(nn.Module):
    """Sizes through Python (`int(x.shape[i])`) into two reshapes; only the input declared dynamic, so the
    output is declared [2, 10, 32], export-time sizes that the repair must not keep as promises."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.qkv, self.out = nn.Linear(32, 96), nn.Linear(32, 32)

    def forward(self, x):
        b, s = int(x.shape[0]), int(x.shape[1])
        q, k, v = self.qkv(x).reshape(b, s, 3, 4, 8).permute(2, 0, 3, 1, 4)
        attended = (q @ k.transpose(-1, -2) / 8 ** 0.5).softmax(-1) @ v
        return self.out(attended.transpose(1, 2).reshape(b, s, 32))


def test_baked_batch_and_length_are_repaired_and_the_output_follows_them(tmp_path):
    path = export(Qkv(), (torch.randn(2, 10, 32),), ["x"], {"x": {0: "B", 1: "S"}}, tmp_path / "qkv.onnx")
    done, out = repaired(path, Qkv(), floats(lambda b, s: (b, s, 32)), [(1, 4), (2, 10), (3, 17)],
                         "--trace-shape", "x=2x10x32", "--unsafe-fixes", expect=WRITTEN)
    assert "applied GF004" in done.output and EXACT in done.output
    dims = onnx.load(out).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["B", "S", 32]


class Frames(nn.Module):
    """A healthy audio model: a kernel-16 Conv1d front end with stride 8, then a per-frame projection."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.proj = nn.Conv1d(1, 8, 16, stride=8), nn.Linear(8, 8)

    def forward(self, x):
        return self.proj(self.conv(x[:, None]).transpose(1, 2))


def test_a_healthy_audio_front_end_is_written_as_it_came(tmp_path):
    path = export(Frames(), (torch.randn(2, 400),), ["x"], {"x": {0: "B", 1: "samples"}, "output": {0: "B", 1: "T"}},
                  tmp_path / "frames.onnx")
    done, out = repaired(path, Frames(), floats(lambda b, t: (b, t)), [(1, 160), (2, 400), (3, 1000)],
                         expect=WRITTEN)
    assert "unchanged" in done.output and out.read_bytes() == path.read_bytes()
