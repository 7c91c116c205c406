"""GF006 trace-baked-constant on constants written in ONNX text: cut at an export-time size, found and (where
structural) rebuilt. Structured constants of PyTorch modules: test_gf006_torch_structures.py; positions folded for
a longer table: test_gf006_folded_positions.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import of_rule, parse, run

import graphfix
from graphfix.validate import ValidationOptions


def model_with(constant: np.ndarray, op: str = "Add", name: str = "c") -> onnx.ModelProto:
    """`y = op(x, constant)`; the constant named `name` (the TorchScript exporter keeps a parameter's own name and
    names a folded cut anew, `onnx::Add_7`)."""
    values = ", ".join(str(float(v)) for v in constant.reshape(-1))
    dims = ", ".join(str(d) for d in constant.shape)
    model = parse(f"""< ir_version: 8, opset_import: ["" : 17] >
        g (float[B, T] x) => (float[B, T] y) <float[{dims}] c = {{{values}}}> {{
            y = {op}(x, c)
        }}""")
    model.graph.initializer[0].name = model.graph.node[0].input[1] = name
    return model


def feeds(batch: int, time: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(time).standard_normal((batch, time)).astype(np.float32)}


@pytest.mark.parametrize("constant,ops,expected,says", [
    (np.arange(6, dtype=np.float32).reshape(1, 6), ["Range"], lambda t: np.arange(t, dtype=np.float32),
     "clamp(max=c)"),
    (np.ones((1, 6), np.float32), [], lambda t: np.ones(t, np.float32), "added indicator"),
], ids=["arange", "uniform"])
def test_structural_constant_is_rebuilt_and_runs_at_every_length(constant, ops, expected, says, tmp_path):
    """0..5 is arange(T) or arange(T).clamp(max=c) for any c >= 5; ones added along T are also an indicator of the
    positions before an edge past 6 (helper 54): neither is rebuilt by default, and `--unsafe-fixes` builds the
    simplest."""
    model = model_with(constant)
    (finding,) = of_rule("GF006", graphfix.diagnose(model, static=True))
    assert finding.severity.value == "error" and finding.fix is not None and finding.fix.safety.value == "unsafe"
    assert says in finding.fix.reason
    assert graphfix.repair(model).status == "unchanged"
    with pytest.raises(Exception, match="broadcast"):
        run(model, feeds(2, 9))  # the export length (6) runs, no other does
    # The original runs only at the export length and T=1, with the wrong output shape: no size gives a reference, so
    # the proof reaches `runs`; this test compares the values itself.
    result = graphfix.repair(model, output=str(tmp_path / "fixed.onnx"), validation=ValidationOptions(require="runs"),
                             unsafe_fixes=True)
    assert result.status == "repaired" and not of_rule("GF006", result.after.findings)
    onnx.checker.check_model(result.model, full_check=True)
    assert all(op in [n.op_type for n in result.model.graph.node] for op in ops)
    for batch, time in [(1, 6), (2, 3), (3, 11)]:
        x = feeds(batch, time)
        (got,) = run(result.model, x)
        np.testing.assert_allclose(got, x["x"] + expected(time), rtol=1e-6)


@pytest.mark.parametrize("constant,op,safety", [
    (np.full((1, 5), 0.2, np.float32), "Mul", "unsafe"),  # 1/T at T=5: `full((T,), 1 / T)` keeps no 0.2 elsewhere
    (np.full((1, 6), 0.0, np.float32), "Add", "unsafe"),  # an added mask that lets everything through
    (np.full((1, 6), 1.0, np.float32), "Div", "unsafe"),  # overlap-add's counts past the edge (helper 116)
    (np.full((1, 6), 1.0, np.float32), "Sub", "unsafe"),  # subtracting them may be an indicator's (helper 54)
], ids=["one-over-T", "added-zeros", "divided-ones", "subtracted-ones"])
def test_a_uniform_constant_is_safe_only_where_nothing_else_gives_its_value(constant, op, safety):
    """Helper 47: `full((T,), 1 / T)` was shrunk keeping 1/5, wrong at every other length, and `x / ones(int(T))`
    was refused as if it were a mask. Helper 54: `x + (arange(T) < 20)` is all ones at T=12, so ones added or
    subtracted along T are also such an indicator; helper 116: so are ones divided by, overlap-add's counts
    `1 + (arange(T) >= 20)` (a safe shrink was wrong past 20: unsafe, applied with --unsafe-fixes)."""
    (finding,) = of_rule("GF006", graphfix.diagnose(model_with(constant, op), static=True))
    assert finding.fix.safety.value == safety, finding.fix.reason


def test_an_empty_constant_is_judged_not_crashed_on():
    model = parse("""<ir_version: 10, opset_import: ["" : 17]>
        g (float[T, 0] x) => (float[T, 0] y) <float[7, 0] c = {}> { y = Add(x, c) }""")
    assert [f.fix.safety.value for f in of_rule("GF006", graphfix.diagnose(model, static=True))] == ["safe"]


def test_an_identity_added_to_a_graph_is_also_a_strided_pattern():
    """`adj + eye(int(N))` (a graph's self-loops) is also `adj + ((i - j) % s == 0)` for any s past N (a seasonal
    graph's links, helper 52: rebuilt as an eye, it was wrong past s with exit 0), so the eye is not rebuilt by
    default, however its values are applied."""
    eye = ", ".join(str(float(v)) for v in np.eye(6).reshape(-1))
    model = parse(f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[B, T, T] x) => (float[B, T, T] y) <float[6, 6] c = {{{eye}}}> {{ y = Add(x, c) }}""")
    (finding,) = of_rule("GF006", graphfix.diagnose(model, static=True))
    assert finding.fix.safety.value == "unsafe" and "EyeLike" in finding.fix.summary
    assert "(i - j) % s == 0" in finding.fix.reason and "seasonal" in finding.fix.reason


def test_table_cut_at_the_export_length_is_reported_not_guessed():
    table = np.random.default_rng(0).standard_normal((1, 6)).astype(np.float32)  # a positional table's rows
    (finding,) = of_rule("GF006", graphfix.diagnose(model_with(table, name="onnx::Add_7"), static=True))
    assert finding.fix is None and "not recoverable" in finding.message
    assert "constant 'onnx::Add_7' [1, 6] cut at" in finding.message
    assert "self.pe[:, : x.size(1)]" in finding.hint and "without int()" in finding.hint


def test_a_table_the_model_uses_whole_is_its_own_size_not_a_cut():
    """A constant that keeps a parameter's name is one the model uses whole (helper 114: transformers' Hiera adds
    its learned `position_embeddings` as they are, and PyTorch takes that one size too): no rebuild, and the
    finding says so rather than that a table was cut."""
    table = np.random.default_rng(0).standard_normal((1, 6)).astype(np.float32)
    (finding,) = of_rule("GF006", graphfix.diagnose(model_with(table, name="m.pos_embed"), static=True))
    assert finding.fix is None and "used whole" in finding.message and "not recoverable" not in finding.message
    assert "constant 'm.pos_embed' [1, 6] of export-time sizes" in finding.message
    assert "set-shape" in finding.hint


def test_a_learned_gain_is_never_regrown(tmp_path):
    """`x * gain` with gain [[0.3, -1.2]] where x's last dim was declared dynamic: two values, but no mask's. The
    original is only valid at width 2 and fails elsewhere, rightly; nothing may be fabricated for width 4."""
    model = model_with(np.array([[0.3, -1.2]], np.float32), op="Mul", name="gain")
    (finding,) = of_rule("GF006", graphfix.diagnose(model, static=True))
    assert finding.fix is None and "used whole" in finding.message
    result = graphfix.repair(model, unsafe_fixes=True)
    assert result.status == "unchanged" and result.model is not None and not result.applied


def test_constant_with_static_dims_is_quiet():
    model = parse("""< ir_version: 8, opset_import: ["" : 17] >
        g (float[B, 4] x) => (float[B, 4] y) <float[1, 4] c = {1.0, 2.0, 3.0, 4.0}> { y = Mul(x, c) }""")
    assert not of_rule("GF006", graphfix.diagnose(model, static=True))


def test_a_size_one_constant_is_quiet():
    assert not of_rule("GF006", graphfix.diagnose(model_with(np.full((1, 1), 2.0, np.float32)), static=True))

def test_a_fix_the_model_s_opset_cannot_hold_is_dropped_with_its_reason(tmp_path):
    """Opset 9 has only Slice-1, whose bounds are attributes: the fix's Slice up to x.shape[1] cannot be written
    there. It wrote one anyway, which onnxruntime refused to load (found by a review); the fix is dropped, the
    model refused with the reason, and nothing is written. (A table's prefix is an unsafe fix: asked for.)"""
    import subprocess
    import sys

    from onnx import TensorProto, helper, numpy_helper

    pe = np.random.default_rng(0).standard_normal((1, 4096, 8)).astype(np.float32)
    nodes = [helper.make_node("Add", ["x", "c"], ["h"]),
             helper.make_node("Slice", ["pe"], ["pe_mem"], starts=[0], ends=[16], axes=[1]),
             helper.make_node("Add", ["mem", "pe_mem"], ["k"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["h", "kt"], ["y"])]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 8]),
                                           helper.make_tensor_value_info("mem", TensorProto.FLOAT, ["B", 16, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", 16])],
                              [numpy_helper.from_array(pe, "pe"), numpy_helper.from_array(pe[:, :7].copy(), "c")])
    path = tmp_path / "opset9.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=4), path)
    done = subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(tmp_path / "o.onnx"),
                           "--unsafe-fixes"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "needs Slice of opset 10 or later" in done.stdout, done.stdout + done.stderr
    assert not (tmp_path / "o.onnx").exists()
