"""validate(): identical models pass, a changed node fails with the right bisect result, a repair of a model
that fails at some sizes passes when its shapes agree with shape inference."""

import json

import numpy as np
import onnx
import onnx.parser

from graphfix.validate import ValidationOptions, validate
from graphfix.validate.compare import ShapeOracle, compare_arrays, evaluate_dim

HEADER = '<ir_version: 10, opset_import: ["" : 17]>\n'


def model(text: str) -> onnx.ModelProto:
    m = onnx.parser.parse_model(HEADER + text)
    onnx.checker.check_model(m)
    return m


def chain(middle_op: str) -> onnx.ModelProto:
    return model(f"""
    g (float[N, 4] X) => (float[N, 4] Y) {{
        [first] A = Relu(X)
        [middle] B = {middle_op}(A, X)
        [last] Y = Mul(B, B)
    }}""")


def reshape_model(shape: list[int]) -> onnx.ModelProto:
    """X[N, T, 4] -> Reshape(shape) -> Y; a baked shape works only at the export size."""
    values = ", ".join(str(v) for v in shape)
    return model(f"""
    g (float[N, T, 4] X) => (float[?, ?] Y) <int64[{len(shape)}] target = {{{values}}}> {{
        [flatten] Y = Reshape(X, target)
    }}""")


def test_identical_models_pass():
    validation = validate(chain("Add"), chain("Add"), ValidationOptions())
    assert validation.passed, validation.reasons
    assert len(validation.sizes) == 3 and validation.evidence == "original"
    assert all(run.outputs[0].max_abs == 0.0 for run in validation.runs)
    # compared everywhere; at batch 1 (a coincidence: every broadcast of N succeeds) it earns no level
    assert {run.level for run in validation.runs if 1 not in run.sizes.values()} == {"original"}
    assert {run.level for run in validation.runs if 1 in run.sizes.values()} == {"runs"}
    json.dumps(validation.to_json())  # plain JSON types only


def test_changed_node_fails_and_bisect_names_it():
    validation = validate(chain("Add"), chain("Sub"), ValidationOptions())
    assert not validation.passed
    assert any("output 'Y' differs" in reason for reason in validation.reasons)
    assert validation.divergence["node"] == "middle"
    assert validation.divergence["op_type"] == "Sub"
    assert validation.divergence["tensor"] == "B"
    assert validation.divergence["max_abs"] > 0
    json.dumps(validation.to_json())


def test_tolerance_is_respected():
    small_change = model("""
    g (float[N, 4] X) => (float[N, 4] Y) {
        [first] A = Relu(X)
        eps = Constant<value = float {0.00001}>()
        [middle] B = Add(A, X)
        [nudge] C = Add(B, eps)
        [last] Y = Mul(C, C)
    }""")
    assert validate(chain("Add"), small_change, ValidationOptions(atol=1e-3)).passed
    assert not validate(chain("Add"), small_change, ValidationOptions(atol=1e-7, rtol=1e-7)).passed


def test_repair_of_a_baked_reshape_reaches_runs_for_a_dim_without_reference():
    export_sizes = ValidationOptions(trace_sizes={"N": 2, "T": 6})
    original, repaired = reshape_model([12, 4]), reshape_model([-1, 4])
    validation = validate(original, repaired, export_sizes)
    first, *others = validation.runs
    assert first.level == "original" and first.outputs[0].ok  # compared numerically at the export size
    assert all(run.original_error and run.candidate_error is None for run in others)
    # N away from 2 is compared sample by sample with the original at N=2; T away from 6 has no reference at all
    assert validation.dims == {"N": "consistent", "T": "runs"}
    assert validation.passed  # `runs` is the default
    strict = validate(original, repaired, ValidationOptions(trace_sizes={"N": 2, "T": 6}, require="consistent"))
    assert not strict.passed and "T: runs" in strict.reasons[0] and "--require runs" in strict.reasons[0]


def test_repair_that_still_fails_is_refused_with_node_and_size():
    export_sizes = ValidationOptions(trace_sizes={"N": 2, "T": 6})
    validation = validate(reshape_model([12, 4]), reshape_model([12, 4]), export_sizes)
    assert not validation.passed
    assert any("node 'flatten'" in r and "'T': 9" in r for r in validation.reasons)


def test_repair_with_wrong_values_at_the_export_size_is_refused():
    validation = validate(
        reshape_model([12, 4]), reshape_model([-1, 2]), ValidationOptions(trace_sizes={"N": 2, "T": 6})
    )
    assert not validation.passed  # the original runs at the export size, and the shapes differ there
    assert any("shape [24, 2] instead of [12, 4]" in r for r in validation.reasons)


def test_output_shapes_disagreeing_with_the_original_declaration_are_refused():
    declared = model("""
    g (float[N, T, 4] X) => (float[N, 4] Y) <int64[2] target = {99, 4}> {
        [flatten] Y = Reshape(X, target)
    }""")  # fails everywhere; declares Y [N, 4]
    validation = validate(declared, reshape_model([-1, 4]), ValidationOptions(require="runs"))
    assert not validation.passed
    assert any("output 'Y' dim 0 is" in r and "the original declares N" in r for r in validation.reasons)


def test_shape_oracle_checks_expressions_of_input_dims():
    oracle = ShapeOracle(reshape_model([-1, 4]))
    assert oracle.expected["Y"] == ["N*T", 4]
    assert oracle.mismatches({"Y": np.zeros((6, 4))}, {"N": 2, "T": 3}) == []
    assert oracle.mismatches({"Y": np.zeros((5, 4))}, {"N": 2, "T": 3}) == [
        "output 'Y' dim 0 is 5, shape inference says N*T = 6"
    ]


def test_evaluate_dim_uses_bound_symbols_only():
    assert evaluate_dim("2*N*T", {"N": 2, "T": 3}) == 12
    assert evaluate_dim("N", {"N": 5}) == 5
    assert evaluate_dim(7, {}) == 7
    assert evaluate_dim("unk__0", {"N": 2}) is None


def test_compare_arrays_reports_errors_and_treats_nan_as_equal():
    same = compare_arrays("y", np.array([1.0, np.nan]), np.array([1.0, np.nan]), 1e-3, 1e-4)
    assert same.ok and same.max_abs == 0.0
    off = compare_arrays("y", np.array([1.0, 2.0]), np.array([1.0, 2.5]), 1e-3, 1e-4)
    assert not off.ok and off.max_abs == 0.5 and abs(off.max_rel - 0.25) < 1e-9


def test_half_precision_is_compared_at_its_own_precision():
    expected = np.array([1.0, 0.5], np.float16)
    assert compare_arrays("y", expected, expected + np.float16(0.000977), 1e-3, 1e-4).ok  # one fp16 ulp at 1.0
    assert not compare_arrays("y", expected, expected + np.float16(0.1), 1e-3, 1e-4).ok
    assert not compare_arrays("y", expected.astype(np.float32), expected.astype(np.float32) + 0.000977, 1e-3, 1e-4).ok


def scaled(factor: str) -> onnx.ModelProto:
    return model(f"""
    g (float[N, 4] X) => (float[N, 4] Y) {{
        tiny = Constant<value = float {{{factor}}}>()
        [scale] Y = Mul(X, tiny)
    }}""")


def test_outputs_under_atol_are_compared_at_their_own_scale():
    """A library's init can leave every output near 1e-25 (transformers' MobileNetV2): `atol` alone would let any
    other output under it match, and the proof could not fail."""
    tiny = np.full((2, 3), 1e-25, np.float32)
    assert not compare_arrays("y", tiny, tiny * 2, 1e-3, 1e-4).ok
    assert compare_arrays("y", tiny, tiny * (1 + 1e-5), 1e-3, 1e-4).ok  # rounding passes
    assert not validate(scaled("1e-25"), scaled("2e-25"), ValidationOptions()).passed
    assert validate(scaled("1e-25"), scaled("1e-25"), ValidationOptions()).passed
    usual = np.array([0.5, 0.0, -1.0], np.float32)
    assert compare_arrays("y", usual, usual + 5e-5, 1e-3, 1e-4).ok  # from a magnitude of 0.01 up: atol itself
    assert compare_arrays("y", np.zeros(3, np.float32), np.full(3, 5e-5, np.float32), 1e-3, 1e-4).ok  # no scale
