"""GF001 truncated-graph: outputs cut off from inputs, unused inputs, dead nodes, unused initializers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import op_types, parse, run

import graphfix

HEALTHY = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] X) => (float[N, 4] Y) <float[4] B = {1.0, 2.0, 3.0, 4.0}> {
  Y = Add(X, B)
}"""

BROKEN = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] X, float[N, 4] cache) => (float[N, 4] Y, float[1] Z)
  <float[1] C = {2.0}, float[3] unused = {1.0, 2.0, 3.0}> {
  Y = Relu(X)
  D = Neg(X)
  Z = Identity(C)
}"""


def findings(model, **options):
    return [f for f in graphfix.diagnose(model, static=True, only=["GF001"], **options)]


def test_healthy_model_has_no_findings():
    assert findings(parse(HEALTHY)) == []


def test_reports_each_truncation_with_node_and_tensor():
    found = {f.message.split(" ")[0] + f.severity.value: f for f in findings(parse(BROKEN))}
    messages = " | ".join(f.message for f in found.values())
    assert "output 'Z' does not depend on any graph input" in messages
    assert "graph input 'cache' is not used" in messages
    assert "1 node(s) contribute to no graph output: Neg_D" in messages
    assert "1 initializer(s) are never read: unused" in messages
    by_message = {f.message: f for f in found.values()}
    dead = next(f for m, f in by_message.items() if "contribute to no graph output" in m)
    assert dead.nodes == ["Neg_D"] and dead.fix is not None and dead.fix.safety.value == "safe"
    unused_input = next(f for m, f in by_message.items() if "'cache'" in m)
    assert unused_input.fix.safety.value == "unsafe"


def test_output_without_producer_and_expected_outputs():
    model = parse("""<ir_version: 10, opset_import: ["" : 17]>
g (float[N] X) => (float[N] Y) { Y = Relu(X) }""")
    model.graph.output.add().CopyFrom(onnx.helper.make_tensor_value_info("ghost", onnx.TensorProto.FLOAT, [1]))
    messages = [f.message for f in findings(model, expect_outputs=["Y", "logits"])]
    assert any("'logits' are not graph outputs" in m for m in messages)
    assert any("output 'ghost' has no producer" in m for m in messages)


def test_safe_fix_removes_dead_nodes_and_initializers_but_keeps_interface():
    model = parse(BROKEN)
    result = graphfix.repair(model, validate=False, simplify=False)
    fixed = result.model
    onnx.checker.check_model(fixed, full_check=True)
    assert op_types(fixed) == ["Relu", "Identity"]
    assert [i.name for i in fixed.graph.input] == ["X", "cache"]  # inputs are the user's interface
    assert [o.name for o in fixed.graph.output] == ["Y", "Z"]
    assert "unused" not in {t.name for t in fixed.graph.initializer}
    feeds = {"X": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32),
             "cache": np.zeros((3, 4), np.float32)}
    for before, after in zip(run(model, feeds), run(fixed, feeds), strict=True):
        np.testing.assert_array_equal(before, after)


def test_unsafe_fix_drops_unused_input_only_when_asked():
    fixed = graphfix.repair(parse(BROKEN), validate=False, simplify=False, unsafe_fixes=True).model
    assert [i.name for i in fixed.graph.input] == ["X"]


def test_loop_body_reading_outer_tensor_keeps_it_alive():
    # The Loop body reads outer-scope `S` without naming it as an input: S's producer is not dead.
    model = parse("""<ir_version: 10, opset_import: ["" : 17]>
g (float[4] X, int64 n) => (float[4] Y) <bool cond = {1}> {
  S = Neg(X)
  Y = Loop(n, cond, X) <body = body (int64 i, bool c, float[4] acc) => (bool c_out, float[4] acc_out) {
      c_out = Identity(c)
      acc_out = Add(acc, S)
  }>
}""")
    assert not [f for f in findings(model) if "contribute" in f.message]


torch = pytest.importorskip("torch")


class SizeAsOutput(torch.nn.Module):
    def forward(self, x):
        return x * 2, torch.tensor(float(x.shape[1]))


def test_torch_export_of_size_through_python_is_flagged(tmp_path):
    path = tmp_path / "m.onnx"
    torch.onnx.export(SizeAsOutput(), (torch.randn(2, 5),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y", "length"], dynamic_axes={"x": {0: "B", 1: "T"}})
    messages = [f.message for f in findings(path)]
    assert any("output 'length' does not depend on any graph input" in m for m in messages)
