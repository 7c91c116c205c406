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
    assert 40 in size_thresholds(onnx.load(path))
    assert any(b["T"] > 40 for b in probe_sizes(onnx.load(path), ValidationOptions()))
    found = errors(path)
    assert [f.rule for f in found] == ["GF000"], found
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
