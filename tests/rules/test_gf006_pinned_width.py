"""GF006 on a width computed in Python that no broadcast meets (#22, lengths from values): speechbrain's
`length_to_mask(lengths)` without `max_len` takes the mask's width from `lengths.max().item()`. Traced, `arange(T)`
is folded and compared with the lengths `[B, 1]`; the mask meets the time dim only where attention (here a
`view`) reshapes it with traced sizes, whose element count holds at the export length only. The size analysis
pins T there and `graphfix.analysis.pinned` follows it back to the constant. Its values 0, 1, ... are arange(T)
or a clamped arange: the fix is unsafe, applied with `--unsafe-fixes` (and by `graphfix.export`, where the module
settles it). tests/frontends exports speechbrain's own EncoderWrapper, which does this.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import run

import graphfix
from graphfix.core.rule import Safety

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class LengthMasked(torch.nn.Module):
    """x [B, T, D] masked by absolute lengths [B] (the longest is T), the mask's width `lengths.max().item()`.
    `width`: "item" as speechbrain; "traced" gives the traced size (healthy); "learned" multiplies by a learned
    row of the export width instead of positions (not a formula)."""

    def __init__(self, width: str = "item", export_length: int = 10):
        super().__init__()
        self.width = width
        self.row = torch.nn.Parameter(torch.randn(export_length))

    def forward(self, x, lengths):
        if self.width == "traced":
            positions = torch.arange(x.shape[1], dtype=lengths.dtype)
        elif self.width == "learned":
            positions = self.row * 0 + self.row  # a learned row as long as the export length
        else:
            positions = torch.arange(int(lengths.max().item()), dtype=lengths.dtype)
        mask = (positions.unsqueeze(0) < lengths.unsqueeze(1)).float()  # [B, width]
        return x * mask.reshape(x.shape[0], x.shape[1], 1)


def inputs(batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(batch * 100 + length)
    lengths = np.linspace(length, max(1, length // 2), batch).round().astype(np.float32)
    return rng.standard_normal((batch, length, 3)).astype(np.float32), lengths


def export(module, path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(torch.from_numpy(a) for a in inputs(2, 10)), str(path), dynamo=False,
                          opset_version=17, input_names=["x", "lengths"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "time"}, "lengths": {0: "batch"},
                                        "y": {0: "batch", 1: "time"}})
    return str(path)


def expected(module, batch: int, length: int) -> np.ndarray:
    with torch.no_grad():
        return module(*(torch.from_numpy(a) for a in inputs(batch, length))).numpy()


def feeds(batch: int, length: int) -> dict[str, np.ndarray]:
    return dict(zip(("x", "lengths"), inputs(batch, length), strict=True))


def test_a_width_from_item_is_found_where_a_reshape_pins_it(tmp_path):
    path = export(LengthMasked(), tmp_path / "item.onnx")
    with pytest.raises(Exception, match=r"10 by 12|cannot be reshaped"):
        run(path, feeds(2, 12))  # the export as it is: the width stays 10
    (finding,) = [f for f in graphfix.diagnose(path, static=True) if "holds only at time=10" in f.message]
    assert finding.rule == "GF006" and "arange(10) along axis" in finding.message and ".item()" in finding.message
    assert finding.fix.safety is Safety.UNSAFE and "clamp" in finding.fix.reason


def test_default_repair_names_the_unsafe_fix_and_writes_nothing(tmp_path):
    path = export(LengthMasked(), tmp_path / "item.onnx")
    result = graphfix.repair(path, output=str(tmp_path / "fixed.onnx"))
    assert result.output is None and not (tmp_path / "fixed.onnx").exists()
    assert any("holds only at time=10" in f.message and f.fix.safety is Safety.UNSAFE for f in result.after.findings)


def test_unsafe_fixes_rebuild_the_width_from_the_length(tmp_path):
    module = LengthMasked().eval()
    path = export(module, tmp_path / "item.onnx")
    result = graphfix.repair(path, output=str(tmp_path / "fixed.onnx"), unsafe_fixes=True)
    assert result.status == "repaired", result.error
    assert any("Range(0, Shape(x)[1])" in a.summary for a in result.applied)
    for batch, length in ((1, 7), (2, 10), (3, 31)):
        np.testing.assert_allclose(run(str(tmp_path / "fixed.onnx"), feeds(batch, length))[0],
                                   expected(module, batch, length), rtol=1e-5, atol=1e-6)


def test_the_export_companion_settles_the_unsafe_fix_with_the_module(tmp_path):
    """graphfix.export: the safe repair writes nothing, so it tries the unsafe one beside the scratch export and
    keeps it only because it matches the module at the example and two other sizes."""
    module = LengthMasked().eval()
    example = tuple(torch.from_numpy(a) for a in inputs(2, 10))
    probes = [tuple(torch.from_numpy(a) for a in inputs(b, t)) for b, t in ((1, 7), (3, 31))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = graphfix.export(module, example, tmp_path / "out.onnx", input_names=["x", "lengths"],
                                 output_names=["y"], opset_version=17, probe_args=probes,
                                 dynamic_axes={"x": {0: "batch", 1: "time"}, "lengths": {0: "batch"},
                                               "y": {0: "batch", 1: "time"}})
    assert report.ok and len(report.checks) == 3, report.summary()
    np.testing.assert_allclose(run(str(tmp_path / "out.onnx"), feeds(4, 17))[0], expected(module, 4, 17),
                               rtol=1e-5, atol=1e-6)


def test_the_traced_width_gets_no_finding(tmp_path):
    path = export(LengthMasked("traced"), tmp_path / "traced.onnx")
    assert not [f for f in graphfix.diagnose(path, static=True) if f.severity.value == "error"]


def test_a_learned_row_pinned_the_same_way_is_reported_but_never_regrown(tmp_path):
    path = export(LengthMasked("learned"), tmp_path / "learned.onnx")
    (finding,) = [f for f in graphfix.diagnose(path, static=True) if "holds only at time=10" in f.message]
    assert finding.fix is None and "not an arange" in finding.message
    result = graphfix.repair(path, output=str(tmp_path / "fixed.onnx"), unsafe_fixes=True)
    assert result.output is None
