"""GF007 on slices cut at a Python int while tracing, exported by the TorchScript exporter with dynamic batch and
time: the constant end is found from the constraint it breaks, rebuilt from Shape ops, and the repair matches
PyTorch at sizes shorter and longer than the export one; the healthy spelling is quiet."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest

import graphfix
from graphfix.core.rule import Safety

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

EXPORT = (2, 8)
SIZES = ((1, 3), (2, 8), (3, 13))


class Delta(torch.nn.Module):  # frame differences, the end through Python
    def forward(self, x):
        return x[:, 1:] - x[:, : int(x.shape[1]) - 1]


class HealthyDelta(torch.nn.Module):
    def forward(self, x):
        return x[:, 1:] - x[:, :-1]


class Halves(torch.nn.Module):  # both bounds baked: the graph cannot tell T - 4 from T // 2
    def forward(self, x):
        h = int(x.shape[1]) // 2
        return x[:, :h] * x[:, h:]


def export(module, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(*EXPORT, 4),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "frames"}})


def run(model, x):
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_a_slice_end_baked_by_int_is_found_rebuilt_and_matches_pytorch(tmp_path):
    path = tmp_path / "delta.onnx"
    export(Delta(), path)
    x = np.random.default_rng(0).standard_normal((3, 13, 4)).astype(np.float32)
    with pytest.raises(Exception, match="broadcast"):
        run(path, x)  # broken away from the export length

    findings = [f for f in graphfix.diagnose(path, static=True) if f.severity.value != "info"]
    assert [f.rule for f in findings] == ["GF007"]  # GF004 leaves a solved slice end to it
    assert findings[0].severity.value == "error"
    assert "ends at 7" in findings[0].message and "time - 1" in findings[0].message and "time=8" in findings[0].message
    assert findings[0].fix.safety is Safety.SAFE

    result = graphfix.repair(path)
    assert result.status == "repaired", result.error
    # time away from 8 has no independent reference (the original fails there): the re-trace is only the derived check
    assert result.validation["dims"] == {"batch": "original", "time": "runs"}
    assert result.validation["derived"]["matched"] >= 2 and result.validation["derived"]["differed"] == 0
    for batch, time in SIZES:
        x = np.random.default_rng(time).standard_normal((batch, time, 4)).astype(np.float32)
        np.testing.assert_allclose(run(result.model, x), Delta()(torch.from_numpy(x)).numpy(), rtol=1e-6)


def test_the_healthy_spelling_is_quiet(tmp_path):
    path = tmp_path / "healthy.onnx"
    export(HealthyDelta(), path)
    assert not [f for f in graphfix.diagnose(path, static=True) if f.severity.value != "info"]
    assert graphfix.repair(path).status == "unchanged"


def test_a_solution_that_keeps_another_constant_is_only_offered_as_unsafe(tmp_path):
    path = tmp_path / "halves.onnx"
    export(Halves(), path)
    findings = [f for f in graphfix.diagnose(path, static=True) if f.rule == "GF007"]
    assert findings and all(f.fix.safety is Safety.UNSAFE for f in findings), [f.message for f in findings]
    reason = findings[0].fix.reason
    assert "several ends fit" in reason and "time // 2" in reason and "time - 4" in reason, reason
    assert graphfix.repair(path).status != "repaired"  # not by default


def test_onnxruntime_failure_confirms_the_finding_instead_of_blaming_a_mask(tmp_path):
    path = tmp_path / "delta.onnx"
    export(Delta(), path)
    findings = [f for f in graphfix.diagnose(path) if f.severity.value == "error"]
    assert [f.rule for f in findings] == ["GF007"], [(f.rule, f.message) for f in findings]
    assert "Confirmed by onnxruntime" in findings[0].message
