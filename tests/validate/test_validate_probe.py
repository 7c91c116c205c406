"""probe(): every failing node is reported (not only the first), mapped to its rule; odd outputs warn."""

import numpy as np
import onnx
import onnx.parser
import pytest

from graphfix.core.rule import Severity
from graphfix.validate import ValidationOptions, probe

HEADER = '<ir_version: 10, opset_import: ["" : 17]>\n'


def model(text: str) -> onnx.ModelProto:
    m = onnx.parser.parse_model(HEADER + text)
    onnx.checker.check_model(m)
    return m


# Two independent failures: a mask of lower rank (HuBERT's x[mask] = 0) and a reshape baked to 7x7,
# plus a reshape downstream of the baked one, which only a cut graph reaches.
TWO_BRANCHES = model("""
g (float[N, T, 4] X, bool[N, T] M) => (float[N, T, 4] Y, float[?] Z)
    <int64[2] baked = {7, 7}, int64[1] five = {5}> {
    zero = Constant<value = float {0}>()
    [mask_where] Y = Where(M, zero, X)
    [baked_reshape] R = Reshape(X, baked)
    [downstream_reshape] Z = Reshape(R, five)
}""")


def by_node(failures):
    return {f.node: f for f in failures}


def test_independent_and_downstream_failures_are_all_reported():
    failures = by_node(probe(TWO_BRANCHES, ValidationOptions()))
    assert set(failures) == {"mask_where", "baked_reshape", "downstream_reshape"}
    assert failures["mask_where"].rule == "GF003"
    assert failures["baked_reshape"].rule == "GF004"
    assert failures["baked_reshape"].shapes["X"] == [2, 7, 4]  # inputs of the failing node, from a run
    assert failures["downstream_reshape"].shapes["R"] == [7, 7]  # fed with the shape inference expects


def test_failure_becomes_an_error_finding_naming_node_and_cause():
    failure = by_node(probe(TWO_BRANCHES, ValidationOptions()))["mask_where"]
    finding = failure.to_finding()
    assert finding.severity is Severity.ERROR
    assert (finding.rule, finding.name) == ("GF003", "broadcast-mismatch")
    assert finding.nodes == ["mask_where"]
    assert "Attempting to broadcast an axis by a dimension other than 1" in finding.message
    assert "unsqueeze" in finding.hint
    assert finding.to_json()["shapes"]["M"] == [2, 7]


def test_a_healthy_model_reports_nothing():
    healthy = model("""
    g (float[N, T, 4] X, bool[N, T, 4] M) => (float[N, T, 4] Y) {
        zero = Constant<value = float {0}>()
        Y = Where(M, zero, X)
    }""")
    assert probe(healthy, ValidationOptions()) == []


CONCAT_CASES = [
    # Concat fed by a Split/Expand chain (unrolled repeat_interleave) -> GF002, otherwise GF004
    ("Split", "GF002"),
    ("Identity", "GF004"),
]


@pytest.mark.parametrize(("feeder", "rule"), CONCAT_CASES)
def test_concat_mismatch_maps_to_repeat_interleave_only_behind_split(feeder, rule):
    body = "P = Split<axis = 1>(X)" if feeder == "Split" else "P = Identity(X)"
    m = model(f"""
    g (float[N, T] X) => (float[?, ?] Y) <float[3, 5] B = {{1,2,3,4,5,6,7,8,9,10,11,12,13,14,15}}> {{
        {body}
        [joined] Y = Concat<axis = 0>(P, B)
    }}""")
    failures = by_node(probe(m, ValidationOptions()))
    assert failures["joined"].rule == rule


def test_input_the_graph_does_not_declare_is_a_truncated_graph():
    m = model("""
    g (float[N, 4] chunk) => (float[N, 4] Y) {
        Y = Relu(chunk)
    }""")
    failures = probe(m, ValidationOptions(inputs={"cnn_cache": np.zeros((1, 2), np.float32)}))
    assert [f.rule for f in failures] == ["GF001"]
    assert failures[0].tensors == ["cnn_cache"]
    assert "cnn_cache" in failures[0].message
    finding = failures[0].to_finding()
    assert finding.name == "truncated-graph" and "['cnn_cache'] are fed" in finding.message


def test_nan_output_is_a_warning():
    m = model("""
    g (float[N, 4] X) => (float[N, 4] Y) {
        minus = Constant<value = float {-1}>()
        N2 = Mul(X, minus)
        Y = Log(N2)
    }""")
    failures = probe(m, ValidationOptions())
    assert [(f.rule, f.severity) for f in failures] == [("GF005", Severity.WARNING)]
    finding = failures[0].to_finding()
    assert finding.name == "suspicious-output" and finding.tensors == ["Y"]
    assert "NaN" in finding.message


def test_output_empty_at_every_size_is_a_warning():
    m = model("""
    g (float[N, 4] X) => (float[?, 4] Y) <int64[1] starts = {0}, int64[1] ends = {0}> {
        Y = Slice(X, starts, ends)
    }""")
    failures = probe(m, ValidationOptions())
    assert [f.rule for f in failures] == ["GF005"]
    assert "empty" in failures[0].message


def test_failures_after_a_cut_are_not_blamed_on_a_rule():
    # Reshape_0 fails (4 elements into [3, -1]); the values fabricated for its output then break Reshape_1,
    # which is a consequence of the first failure, not a baked shape of its own.
    model = onnx.parser.parse_model("""<ir_version: 10, opset_import: ["" : 17]>
g (float[N, T] X) => (float[?, ?] Y) <int64[2] s1 = {3, -1}, int64[2] s2 = {2, -1}> {
  A = Reshape(X, s1)
  Y = Reshape(A, s2)
}""")
    failures = probe(model, ValidationOptions(shapes={"X": (2, 2)}))
    assert (failures[0].node, failures[0].rule) == ("Reshape_0", "GF004")
    assert failures[1:] and all(f.rule == "GF000" for f in failures[1:])
