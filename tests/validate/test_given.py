"""`--input NAME=FILE.npy` on diagnose, check and repair (graphfix.validate.given): an array the input cannot take
is the user's input failing, not the model. Before, a rank-2 array for a rank-3 input, or one with 5 features for
an input that declares 4, was reported as the model failing (GF000 error, exit 1), and a float64 array for a
float32 input the same ("Unexpected input data type"). Now the first two are one-line usage errors (exit 2) and
the third is cast, as freeze casts its fills; values the type cannot hold are refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import parse

from graphfix.cli import cli

MODEL = """< ir_version: 8, opset_import: ["" : 17] >
    g (float[B, T, 4] x, int64[B] n) => (float[B, T, 4] y, int64[B] m) { y = Relu(x)  m = Neg(n) }"""


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(parse(MODEL), path)
    return path


def given(tmp_path, name: str, value: np.ndarray) -> str:
    path = tmp_path / f"{name}-{value.dtype}-{'x'.join(map(str, value.shape))}.npy"
    np.save(path, value)
    return f"{name}={path}"


def invoke(command: str, model, *inputs: str, out=None):
    args = [command, str(model), *(a for i in inputs for a in ("--input", i))]
    return CliRunner().invoke(cli, [*args, "-o", str(out)] if out else args)


@pytest.mark.parametrize("command", ["diagnose", "check", "repair"])
@pytest.mark.parametrize(("value", "says"), [
    (np.zeros((2, 6), np.float32), "--input x: the array has 2 dims [2, 6], the input has rank 3"),
    (np.zeros((2, 6, 5), np.float32), "--input x: dim 2 of the array is 5, the input declares 4"),
    (np.full((2, 6, 4), 1e39), "--input x: the array holds 1e+39, no float32 value"),
    (np.full((2, 6, 4), 1j, np.complex64), "--input x: the array holds 1j, no float32 value"),
    (np.full((2, 6, 4), "a"), "--input x: the array holds str32 values, the input takes numbers"),  # red team 79
])
def test_an_array_the_input_cannot_take_is_a_usage_error(model, tmp_path, command, value, says):
    out = tmp_path / "fixed.onnx"
    result = invoke(command, model, given(tmp_path, "x", value), out=out if command == "repair" else None)
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output and "GF000" not in result.output
    assert not out.exists()


def test_a_fraction_for_an_integer_input_is_a_usage_error(model, tmp_path):
    result = invoke("diagnose", model, given(tmp_path, "n", np.array([1.5, 2.0])))
    assert result.exit_code == 2 and "--input n: the array holds 1.5, no int64 value" in result.output, result.output


@pytest.mark.parametrize("command", ["diagnose", "check", "repair"])
def test_an_array_of_another_type_the_input_holds_is_cast(model, tmp_path, command):
    out = tmp_path / "fixed.onnx"
    inputs = given(tmp_path, "x", np.random.default_rng(0).normal(size=(2, 6, 4))), \
        given(tmp_path, "n", np.array([3, 4], np.int32))
    result = invoke(command, model, *inputs, out=out if command == "repair" else None)
    assert result.exit_code == 0, result.output
    assert "GF000" not in result.output and "FAIL" not in result.output


def test_whole_numbers_round_into_a_float_input_as_floats_do(model, tmp_path):
    """2049 is float16's 2048 and 16777217 float32's 16777216, as the float64 2049.0 and freeze's fill 2049 round
    (red team 79: an int64 array of them was refused, "holds 2049, no float16 value")."""
    result = invoke("diagnose", model, given(tmp_path, "x", np.full((2, 6, 4), 16777217, np.int64)))
    assert result.exit_code == 0 and "GF000" not in result.output, result.output


SHARED = """< ir_version: 8, opset_import: ["" : 17] >
    g (float[b, t, 4] x, int64[b, t] ids, bfloat16[b] w) => (float[b, t, 4] y) { y = Relu(x) }"""


@pytest.mark.parametrize(("arrays", "says"), [
    ({"ids": np.array([[2**63 + 5]], np.uint64)}, "--input ids: the array holds 9223372036854775813, no int64 value"),
    ({"x": np.zeros((2, 12, 4), np.float32), "ids": np.zeros((2, 13), np.int64)},
     "--input ids: dim 1 of the array is 13, but 't' is 12 in --input x; the inputs share that dim"),
    ({"w": np.zeros((2,), np.float32)}, "--input w: the input is bfloat16, which onnxruntime's Python API takes no"),
], ids=["uint64-past-int64", "shared-dim-apart", "bfloat16-input"])
def test_inputs_the_model_cannot_take_together_are_usage_errors(tmp_path, arrays, says):
    """Helper 81: each was reported as the model failing (GF000, GF003), the uint64 wrapped to a negative index."""
    path = tmp_path / "m.onnx"
    onnx.save(parse(SHARED), path)
    result = invoke("diagnose", path, *(given(tmp_path, name, value) for name, value in arrays.items()))
    assert result.exit_code == 2 and says in result.output, result.output


def test_an_npz_archive_is_a_usage_error_not_an_internal_one(model, tmp_path):
    archive = tmp_path / "x.npz"
    np.savez(archive, x=np.zeros((2, 6, 4), np.float32))
    result = invoke("diagnose", model, f"x={archive}")
    assert result.exit_code == 2 and "is an .npz archive, not a .npy array" in result.output, result.output
    assert "internal error" not in result.output
