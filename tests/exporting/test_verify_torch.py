"""graphfix.verify compares an ONNX file with its PyTorch module and never claims what it did not measure."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
import graphfix  # noqa: E402


class BakedBatch(torch.nn.Module):
    def forward(self, x):
        return x.reshape(int(x.shape[0]), -1, 2)  # int() bakes the export batch into the graph


class BakedShape(torch.nn.Module):
    def forward(self, x):
        return x.reshape(int(x.shape[0]), int(x.shape[1]) // 2, 2)  # onnxruntime fails at any other size


class Dynamic(torch.nn.Module):
    def forward(self, x):
        return x.reshape(x.shape[0], -1, 2)


def export(module, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(3, 8),), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "B", 1: "T"}})
    return path


def test_dynamic_export_matches_at_every_size(tmp_path):
    module = Dynamic()
    report = graphfix.verify(export(module, tmp_path / "m.onnx"), module, (torch.randn(3, 8),))
    assert report.ok
    assert [c.input_shapes["x"] for c in report.checks] == [[3, 8], [6, 16], [9, 24]]
    assert all(o.max_abs == 0.0 for c in report.checks for o in c.outputs)


def test_baked_size_is_caught_at_other_sizes_only(tmp_path):
    module = BakedBatch()
    report = graphfix.verify(export(module, tmp_path / "m.onnx"), module, (torch.randn(3, 8),))
    assert not report.ok
    assert report.checks[0].ok  # the export size still works: that is what makes this bug hard to see
    assert not any(c.ok for c in report.checks[1:])


def test_a_size_onnxruntime_fails_at_is_in_the_report_and_nothing_is_printed(tmp_path, capfd):
    """onnxruntime logs a failing node to the process' stderr by default (red lines during `graphfix.export`'s
    proof, red team 157); the report says it once."""
    module = BakedShape()
    report = graphfix.verify(export(module, tmp_path / "m.onnx"), module, (torch.randn(3, 8),))
    assert not report.ok and "Reshape" in report.checks[1].error, report.checks[1]
    assert "onnxruntime" not in capfd.readouterr().err


def test_explicit_probe_args(tmp_path):
    module = Dynamic()
    path = export(module, tmp_path / "m.onnx")
    report = graphfix.verify(path, module, (torch.randn(3, 8),), probe_args=[(torch.randn(1, 2),)])
    assert report.ok and [c.input_shapes["x"] for c in report.checks] == [[3, 8], [1, 2]]


class Tiny(torch.nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def test_outputs_near_zero_are_compared_at_their_own_scale(tmp_path):
    """Every output near 1e-20: a file off by a factor of two is not passed by `atol`."""
    path = export(Tiny(2e-20), tmp_path / "m.onnx")
    assert not graphfix.verify(path, Tiny(1e-20), (torch.randn(3, 8),)).ok
    assert graphfix.verify(path, Tiny(2e-20), (torch.randn(3, 8),)).ok


class Residual(torch.nn.Module):
    """Helper 158: the residual of a near-perfect reconstruction plus a small signal, `z - dec(enc(z))` with `z` of
    30s: outputs up to 1e-3, which PyTorch and onnxruntime round 3e-5 apart."""

    def __init__(self):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(64, 64))
        self.enc, self.dec, self.h = (torch.nn.Linear(64, 64, bias=False), torch.nn.Linear(64, 64, bias=False),
                                      torch.nn.Linear(64, 64))
        with torch.no_grad():
            self.enc.weight.copy_(q)
            self.dec.weight.copy_(q.T)

    def forward(self, x):
        z = x * 30
        return z - self.dec(self.enc(z)) + 1e-3 * torch.tanh(self.h(x))


def test_a_small_output_past_atol_is_compared_with_atol(tmp_path):
    torch.manual_seed(0)
    module, x = Residual().eval(), torch.randn(2, 12, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(tmp_path / "m.onnx"), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "B", 1: "T"}})
    report = graphfix.verify(tmp_path / "m.onnx", module, (x,))
    assert report.ok and 1e-5 < max(o.max_abs for c in report.checks for o in c.outputs) < 1e-4, report
