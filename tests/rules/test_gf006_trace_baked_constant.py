"""GF006 trace-baked-constant: constant tensors cut at an export-time size, found and (where structural) rebuilt."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import parse, run

import graphfix
from graphfix.validate import ValidationOptions


def gf006(findings):
    return [f for f in findings if f.rule == "GF006"]


def model_with(constant: np.ndarray, op: str = "Add") -> onnx.ModelProto:
    values = ", ".join(str(float(v)) for v in constant.reshape(-1))
    dims = ", ".join(str(d) for d in constant.shape)
    return parse(f"""< ir_version: 8, opset_import: ["" : 17] >
        g (float[B, T] x) => (float[B, T] y) <float[{dims}] c = {{{values}}}> {{
            y = {op}(x, c)
        }}""")


def feeds(batch: int, time: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(time).standard_normal((batch, time)).astype(np.float32)}


@pytest.mark.parametrize("constant,ops,expected", [
    (np.arange(6, dtype=np.float32).reshape(1, 6), ["Range"], lambda t: np.arange(t, dtype=np.float32)),
    (np.ones((1, 6), np.float32), [], lambda t: np.ones(t, np.float32)),
], ids=["arange", "uniform"])
def test_structural_constant_is_rebuilt_and_runs_at_every_length(constant, ops, expected, tmp_path):
    model = model_with(constant)
    (finding,) = gf006(graphfix.diagnose(model, static=True))
    assert finding.severity.value == "error" and finding.fix is not None and finding.fix.safety.value == "safe"
    with pytest.raises(Exception, match="broadcast"):
        run(model, feeds(2, 9))  # the export length (6) runs, no other does
    # The original runs only at the export length and T=1, with the wrong output shape: no size gives a reference, so
    # the proof reaches `runs`; this test compares the values itself.
    result = graphfix.repair(model, output=str(tmp_path / "fixed.onnx"), validation=ValidationOptions(require="runs"))
    assert result.status == "repaired" and not gf006(result.after.findings)
    onnx.checker.check_model(result.model, full_check=True)
    assert all(op in [n.op_type for n in result.model.graph.node] for op in ops)
    for batch, time in [(1, 6), (2, 3), (3, 11)]:
        x = feeds(batch, time)
        (got,) = run(result.model, x)
        np.testing.assert_allclose(got, x["x"] + expected(time), rtol=1e-6)


def test_table_cut_at_the_export_length_is_reported_not_guessed():
    table = np.random.default_rng(0).standard_normal((1, 6)).astype(np.float32)  # a positional table's rows
    (finding,) = gf006(graphfix.diagnose(model_with(table), static=True))
    assert finding.fix is None and "values beyond the export length are gone" in finding.message
    assert "x.shape[1]" in finding.hint


def test_constant_with_static_dims_is_quiet():
    model = parse("""< ir_version: 8, opset_import: ["" : 17] >
        g (float[B, 4] x) => (float[B, 4] y) <float[1, 4] c = {1.0, 2.0, 3.0, 4.0}> { y = Mul(x, c) }""")
    assert not gf006(graphfix.diagnose(model, static=True))


def test_a_size_one_constant_is_quiet():
    assert not gf006(graphfix.diagnose(model_with(np.full((1, 1), 2.0, np.float32)), static=True))
