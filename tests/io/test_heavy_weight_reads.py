"""A weight heavy enough to be kept apart (graphfix.io.weights: a stub in the light model, the original tensor in
the weights map) is read through its weights wherever values are read (issue 23): by the rule that finds the
fix, and by the proof's re-traced original. The placeholder itself never reaches a reader.

The model: `h = x + c`, where `c = pe[:, :7]` was folded at the export length 7 (GF006 rebuilds it as a Slice of
`pe`, which it finds by comparing values), and `k = mem + pe[:, :S]` keeps `pe` in the graph; `y = h @ k^T`.
`pe` is 128 KiB, above the heavy threshold.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import run
from onnx import TensorProto, helper, numpy_helper

import graphfix
from graphfix.core.rule import Safety
from graphfix.io.weights import DETACH_MIN_BYTES, detach_inline, is_stub

EXPORT_T = 7
ROWS, WIDTH = 4096, 8


def table_model() -> tuple[onnx.ModelProto, np.ndarray]:
    pe = np.random.default_rng(0).standard_normal((1, ROWS, WIDTH)).astype(np.float32)
    ints = {"zero": [0], "one": [1], "two": [2]}
    nodes = [
        helper.make_node("Add", ["x", "c"], ["h"]),
        helper.make_node("Shape", ["mem"], ["mem_shape"]),
        helper.make_node("Slice", ["mem_shape", "one", "two"], ["mem_len"]),
        helper.make_node("Slice", ["pe", "zero", "mem_len", "one"], ["pe_mem"]),
        helper.make_node("Add", ["mem", "pe_mem"], ["k"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["h", "kt"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "table", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", WIDTH]),
                         helper.make_tensor_value_info("mem", TensorProto.FLOAT, ["B", "S", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", "S"])],
        [numpy_helper.from_array(pe, "pe"), numpy_helper.from_array(pe[:, :EXPORT_T].copy(), "c"),
         *(numpy_helper.from_array(np.array(v, np.int64), name) for name, v in ints.items())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model, pe


def test_the_table_is_heavy_and_kept_apart():
    model, pe = table_model()
    assert pe.nbytes >= DETACH_MIN_BYTES
    light, weights = detach_inline(model)
    assert [t.name for t in light.graph.initializer if is_stub(t)] == ["pe"] and "pe" in weights


def test_a_rule_and_the_retrace_both_read_a_heavy_weight(tmp_path):
    model, pe = table_model()
    path = tmp_path / "table.onnx"
    onnx.save(model, path)
    # the rule: the fix exists only because it read pe's values and found c among them (unsafe: at the export
    # length pe[:T] is also pe[7 - T : 7], so it is asked for)
    (finding,) = [f for f in graphfix.diagnose(path, static=True) if f.rule == "GF006"]
    assert finding.fix is not None and finding.fix.safety is Safety.UNSAFE, finding.message
    assert "start of 'pe'" in finding.message
    # the re-trace: the original fails at every length but 7; re-traced at the others (c regrown from pe), it is
    # the derived check's reference, which ran and matched (it reads pe through the weights map, not the stub)
    result = graphfix.repair(path, output=tmp_path / "fixed.onnx", unsafe_fixes=True)
    assert result.status == "repaired", result.error
    derived = [run["derived"] for run in result.validation["runs"] if run["sizes"]["T"] not in (1, EXPORT_T)]
    assert len(derived) >= 3 and all(d is True for d in derived), result.validation
    for batch, length, memory in [(1, 3, 5), (2, EXPORT_T, 4), (3, 12, 9)]:  # batch 1, and longer than the export
        rng = np.random.default_rng(length)
        x = rng.standard_normal((batch, length, WIDTH)).astype(np.float32)
        mem = rng.standard_normal((batch, memory, WIDTH)).astype(np.float32)
        want = (x + pe[:, :length]) @ (mem + pe[:, :memory]).transpose(0, 2, 1)
        (got,) = run(onnx.load(tmp_path / "fixed.onnx"), {"x": x, "mem": mem})
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_stub_read_directly_says_what_it_is():
    """Code that reads a stub without its weights gets one clear error, never a file lookup of the placeholder."""
    from graphfix.io.external_data import tensor_values

    light, _weights = detach_inline(table_model()[0])
    stub = next(t for t in light.graph.initializer if is_stub(t))
    with pytest.raises(ValueError, match="kept apart"):
        tensor_values(stub, None)
