"""An output whose shape contradicts the model's declaration, found by `diagnose` as `repair` refuses it, and the
probe sizes that show it (found by a sweep of real front ends, helper 29).

- `F.pad(x, (0, math.ceil(T / 8) * 8 - T))` traced at T = 37 pads by `40 - T`: the graph runs at every length, and
  its output stops at 40. The probes stayed below 40 (the export length is not in the graph), so `repair` wrote it
  unchanged with exit 0, and `diagnose` said "no findings". Now the probe goes past 40, the largest constant a size
  is subtracted from (`size_thresholds`): `repair` exits 1 (an unchanged model that fails) and `diagnose` reports
  it. The same idiom written
  with `%` is healthy: no finding, and `repair` writes it.
- a model whose output is declared with its input's dim name but is shorter (a strided Conv1d): `repair` refused
  it unchanged (exit 1) while `diagnose` said nothing; now both say so. With the export size given
  (`--trace-shape`), the declaration is known to be wrong, not the model: neither does.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
from conftest import run

import graphfix
from graphfix.validate import ValidationOptions, probe_sizes
from graphfix.validate.graph_sizes import size_thresholds

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch]

K, EXPORT_T = 8, 37


class CeilChunks(torch.nn.Module):
    """Pads the time axis to a multiple of K with math.ceil (a Python number while tracing), mixes each chunk, and
    cuts back to T."""

    def __init__(self, ceil: bool = True):
        super().__init__()
        self.ceil = ceil
        self.lin, self.conv = torch.nn.Linear(K, K), torch.nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        b, c, t = x.shape
        pad = math.ceil(t / K) * K - t if self.ceil else (K - t % K) % K
        y = torch.nn.functional.pad(x, (0, pad)).reshape(b, c, -1, K)
        y = torch.tanh(self.lin(y)) + y.mean(dim=2, keepdim=True)
        return self.conv(y.reshape(b, c, -1)[..., :t])


class StridedConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 4, 3, stride=2)

    def forward(self, x):
        return self.conv(x)


def export(module, path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, 4, EXPORT_T),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 2: "T"}, "y": {0: "batch", 2: "T"}})
    return path


def repair(path, out, *args):
    return subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(out), *args],
                          capture_output=True, text=True, timeout=300)


def errors(path, **options):
    return [f for f in graphfix.diagnose(path, **options) if f.severity.value == "error"]


def test_a_length_rounded_up_with_ceil_is_probed_past_its_constant_and_refused(tmp_path):
    module = CeilChunks()
    path = export(module, tmp_path / "ceil.onnx")
    x = np.random.default_rng(0).standard_normal((1, 4, 41)).astype(np.float32)
    got, = run(str(path), {"x": x})
    assert got.shape[2] == 40 and module(torch.from_numpy(x)).shape[2] == 41  # the trap: wrong past 40
    assert (40, ("T",)) in size_thresholds(onnx.load(path))
    assert any(b["T"] > 40 for b in probe_sizes(onnx.load(path), ValidationOptions()))
    found = errors(path)
    assert [f.rule for f in found] == ["GF000"], found
    assert "the model runs at sizes" in found[0].message
    assert "output 'y' dim 2 is 40, the model declares T = " in found[0].message
    assert "math.ceil" in found[0].hint
    done = repair(path, tmp_path / "out.onnx")  # written as it came (nothing applies), and exit 1: it fails
    assert done.returncode == 1 and "unchanged model fails" in done.stdout, done.stdout + done.stderr
    assert "output 'y' dim 2 is 40" in done.stdout


def test_the_same_round_up_written_with_mod_is_healthy_and_written(tmp_path):
    module = CeilChunks(ceil=False)
    path = export(module, tmp_path / "mod.onnx")
    assert errors(path) == []
    out = tmp_path / "out.onnx"
    done = repair(path, out)
    assert done.returncode == 0, done.stdout + done.stderr
    for batch, length in ((1, 9), (2, EXPORT_T), (3, 83)):
        x = np.random.default_rng(length).standard_normal((batch, 4, length)).astype(np.float32)
        got, = run(str(out), {"x": x})
        np.testing.assert_allclose(got, module(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_an_output_shorter_than_its_declared_name_is_reported_as_repair_refuses_it(tmp_path):
    path = export(StridedConv(), tmp_path / "strided.onnx")
    found = errors(path)
    assert [f.rule for f in found] == ["GF000"] and "the model declares T = " in found[0].message, found
    assert repair(path, tmp_path / "out.onnx").returncode == 1
    # the export size given: the declaration is contradicted there, so it is a wrong declaration, not a bug
    given = {"trace_shapes": {"x": (2, 4, EXPORT_T)}}
    assert errors(path, **given) == []
    assert repair(path, tmp_path / "out.onnx", "--trace-shape", f"x=2x4x{EXPORT_T}").returncode == 0


# --- found by the review of this change (helper 30): healthy models the new probe size or check refused ----------


class CachedWindow(torch.nn.Module):
    """A decoder step with a cache: positions `arange(past, past + seq)` index a learned table of 64 rows, and a
    sliding window of 40 tokens masks the attention (`qpos - kpos < 40`). Valid while past + seq <= 64."""

    def __init__(self):
        super().__init__()
        self.pos, self.q, self.kv = torch.nn.Embedding(64, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, 32)

    def forward(self, x, past_k, past_v):
        past, seq = past_k.shape[1], x.shape[1]
        positions = torch.arange(past, past + seq)
        h = x + self.pos(positions)[None]
        k, v = self.kv(h).chunk(2, -1)
        k, v = torch.cat([past_k, k], 1), torch.cat([past_v, v], 1)
        qpos, kpos = positions[:, None], torch.arange(past + seq)[None, :]
        allowed = (kpos <= qpos) & (qpos - kpos < 40)
        return (self.q(h) @ k.transpose(1, 2)).masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def test_a_threshold_that_several_dims_meet_moves_one_of_them(tmp_path):
    """Moving seq and past both past 40 needed 83 positions of a 64-row table: a healthy model refused."""
    torch.manual_seed(0)
    path = tmp_path / "cached.onnx"
    example = (torch.randn(2, 5, 16), torch.randn(2, 7, 16), torch.randn(2, 7, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(CachedWindow().eval(), example, str(path), dynamo=False, opset_version=17,
                          input_names=["x", "past_k", "past_v"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "seq"}, "past_k": {0: "batch", 1: "past"},
                                        "past_v": {0: "batch", 1: "past"}, "y": {0: "batch", 1: "seq"}})
    sizes = probe_sizes(onnx.load(path), ValidationOptions())
    past_it = [b for b in sizes if b["seq"] + b["past"] > 40]
    assert past_it and all(b["seq"] + b["past"] <= 64 for b in sizes), sizes
    assert errors(path) == []
    assert repair(path, tmp_path / "out.onnx").returncode == 0


class TopFrames(torch.nn.Module):
    """Keeps the 8 highest-scoring frames: PyTorch's topk needs 8 of them."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        index = torch.topk(h.sum(-1), 8, dim=1).indices
        return torch.gather(h, 1, index.unsqueeze(-1).expand(-1, -1, 4))


def test_a_topk_sets_the_least_length_probed(tmp_path):
    """The batch-1 size went to 7 frames, where TopK fails as PyTorch does: repair refused a healthy model, and
    diagnose (once only a kernel's failure below the export size was the model's minimum) called it an error."""
    torch.manual_seed(0)
    path = tmp_path / "topk.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TopFrames().eval(), (torch.randn(2, 20, 4),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B"}})
    assert all(b["T"] >= 8 for b in probe_sizes(onnx.load(path), ValidationOptions()))
    assert errors(path) == []
    assert repair(path, tmp_path / "out.onnx").returncode == 0


@pytest.mark.slow
def test_a_declared_size_below_zero_is_outside_the_model_not_a_contradiction(tmp_path):
    """dynamo declares `((samples - 400) // 160) + 1` frames: at a guessed 160 samples that is -1, a size outside
    the model (PyTorch refuses below 400), not a declaration the model contradicts."""

    class Frames(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(400, 8)

        def forward(self, x):
            return self.lin(x.unfold(-1, 400, 160))

    torch.manual_seed(0)
    path = tmp_path / "frames.onnx"
    dims = ({0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("samples", min=400, max=100000)},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Frames().eval(), (torch.randn(2, 16000),), str(path), dynamo=True, input_names=["x"],
                          output_names=["y"], dynamic_shapes=dims)
    assert not [f for f in errors(path) if "declares" in f.message]


class BakedBatch(torch.nn.Module):
    """A batch baked while tracing (`int(x.shape[0])`: GF004 finds it and solves the export batch, B = 2), and an
    output `[B, 1, 8]` declared `[B, B, 8]`, as TorchScript wrote speechbrain's ECAPA: a wrong declaration."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        lengths = torch.arange(x.shape[1]).expand(int(x.shape[0]), -1)  # `len(lengths)` as speechbrain writes it
        return self.lin(x * (lengths < x.shape[1]).unsqueeze(-1)).mean(1, keepdim=True)


def test_a_declaration_wrong_at_the_solved_export_size_is_dropped_by_diagnose_as_by_repair(tmp_path):
    """Found by review (helper 30, speechbrain's ECAPA): repair's proof solves the export size and drops the
    declaration the model contradicts there; diagnose did not solve it, and reported the contradiction."""
    torch.manual_seed(0)
    path = tmp_path / "baked.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(BakedBatch().eval(), (torch.randn(2, 10, 8),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "B"}})
    found = errors(path)
    assert "GF004" in [f.rule for f in found], found
    assert not [f for f in found if "dim 1 is 1, the model declares B" in f.message], found  # dropped: wrong
    assert [f for f in found if "dim 0 is 2, the model declares B = 1" in f.message]  # the baked batch: kept


@pytest.mark.parametrize(("trace", "held"), [(None, True), ((2, 5, 7), False)])
def test_a_batch_named_again_is_held_until_the_export_size_shows_it_wrong(trace, held):
    """The TorchScript exporter names dims left out of dynamic_axes by its own inference, at times after the batch
    (GLPN's `[batch, batch, W]`, helper 103). Such a declaration stays a promise where nothing shows it wrong: it was
    all that refused transformers' MobileNetV2, whose TF padding the trace baked (wrong at odd sizes, and the graph
    of a fixed pad). The export size shows it wrong (5 rows where the batch was 2): dropped."""
    model = onnx.parser.parse_model("""<ir_version: 10, opset_import: ["" : 17]>
g (float[batch, H, W] x) => (float[batch, batch, W] y) { y = Relu(x) }""")
    found = [f for f in graphfix.diagnose(model, trace_shapes=trace and {"x": trace}) if f.severity.value == "error"]
    assert bool([f for f in found if "declares" in f.message]) is held, [f.message for f in found]
