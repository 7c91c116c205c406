"""GF006 on positions folded for a longer table and cut to the length (speechbrain's rotary cache computed for the
next power of two of the export length): regrown as Range(0, max(N, T)) with --unsafe-fixes, and reported, not
regrown, where the positions are read other than through the cut."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import of_rule, parse, run

import graphfix


def rotary(summed: bool = False) -> onnx.ModelProto:
    """A rotary cos/sin cache computed for 8 positions (the next power of two of the export length 6, as speechbrain's
    RoPEMHA does with Python ints), as the TorchScript exporter writes it: Constant arange(0, 8), Einsum with the
    frequencies, Cos and Sin stacked, `Reshape(8, 4)`, then the first T rows cut by a Slice. `summed`: the positions'
    sum is added too (their count then matters)."""
    positions = ", ".join(f"{float(p)}" for p in range(8))
    return parse(f"""< ir_version: 8, opset_import: ["" : 17] >
        g (float[B, T, 4] x) => (float[B, T, 4] y) {{
            pos = Constant <value = float[8] {{{positions}}}> ()
            freq = Constant <value = float[2] {{1.0, 0.1}}> ()
            angles = Einsum <equation = "i,j->ij"> (pos, freq)
            last = Constant <value = int64[1] {{-1}}> ()
            cos = Cos(angles)
            sin = Sin(angles)
            c = Unsqueeze(cos, last)
            s = Unsqueeze(sin, last)
            stacked = Concat <axis = -1> (c, s)
            rows = Constant <value = int64[1] {{8}}> ()
            width = Constant <value = int64[1] {{4}}> ()
            shape = Concat <axis = 0> (rows, width)
            table = Reshape(stacked, shape)
            start = Constant <value = int64[1] {{0}}> ()
            end = Shape <start = 1, end = 2> (x)
            axis = Constant <value = int64[1] {{0}}> ()
            cut = Slice(table, start, end, axis)
            {"rotated = Mul(x, cut)" if summed else "y = Mul(x, cut)"}
            {"total = ReduceSum <keepdims = 0> (pos)" if summed else ""}
            {"y = Add(rotated, total)" if summed else ""}
        }}""")


def rotary_reference(x: np.ndarray) -> np.ndarray:
    angles = np.outer(np.arange(x.shape[1], dtype=np.float32), np.float32([1.0, 0.1]))
    return x * np.stack([np.cos(angles), np.sin(angles)], -1).reshape(-1, 4)


def test_positions_computed_for_a_longer_table_and_cut_to_the_length_are_regrown(tmp_path):
    """arange(0, 8) only ever cut to the first T rows: Range(0, max(8, T)), the Reshape(8, 4) on its way taking -1.
    Up to 8 frames the repair computes what the original does; past it, what the formula gives (speechbrain's
    rotary Conformer, tests/frontends, is the same against PyTorch). Past 8 a module may also cap the positions or
    change its frequencies (dynamic NTK scaling computes its cache for max(T, 8)): unsafe, built with
    --unsafe-fixes."""
    model = rotary()
    (finding,) = of_rule("GF006", graphfix.diagnose(model, static=True))
    assert "runs only while T <= 8" in finding.message and finding.fix is not None, finding.message
    assert finding.fix.safety.value == "unsafe" and "1 Reshape(s)" in finding.fix.summary
    assert "dynamic NTK" in finding.fix.reason, finding.fix.reason
    assert graphfix.repair(model).status == "unchanged"
    result = graphfix.repair(model, unsafe_fixes=True)
    assert result.status == "repaired", result
    for batch, time in ((1, 3), (2, 6), (3, 13)):
        x = np.random.default_rng(time).standard_normal((batch, time, 4)).astype(np.float32)
        (got,) = run(result.model, {"x": x})
        np.testing.assert_allclose(got, rotary_reference(x), rtol=1e-5, atol=1e-6)


def test_positions_read_other_than_through_the_cut_are_not_regrown():
    """The positions also summed: their count matters (8 at export, 16 in PyTorch past 8 frames, max(8, T) in a
    longer table), so the table is reported, not regrown."""
    findings = of_rule("GF006", graphfix.diagnose(rotary(summed=True), static=True))
    assert findings and all(f.fix is None for f in findings), [f.message for f in findings]
    assert any("not regrown" in f.message for f in findings), [f.message for f in findings]
