"""`--shape NAME=DIMS` on every command that takes it: a name that is no graph input (a typo) and a shape of
another rank than the input's are one-line usage errors (exit 2), never a run at a guessed size."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from conftest import parse

from graphfix.cli import cli

TWO_INPUTS = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] X, float[N, 4] Z) => (float[N, 4] Y) { Y = Add(X, Z) }"""

COMMANDS = {  # the arguments each command needs besides the model and --shape
    "stream": ["--feedback", "Y=Z", "--steps", "1"],
    "extract": ["--inputs", "X,Z", "--outputs", "Y", "-o", "{out}"],
    "freeze": ["--input", "Z=0", "-o", "{out}"],
    "bench": ["--runs", "1", "--warmup", "0"],
    "repair": ["--dry-run"],
    "diagnose": [],
    "check": [],
}


def invoke(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(("shape", "message"), [
    ("Xx=2x4", "--shape Xx: no such graph input (inputs: X, Z)"),
    ("X=2x4x1", "--shape X: 3 dims given, the input has rank 2"),
    ("X=2", "--shape X: 1 dims given, the input has rank 2"),
])
def test_shape_of_no_input_or_another_rank_is_a_usage_error(tmp_path, command, shape, message):
    model = tmp_path / "m.onnx"
    onnx.save(parse(TWO_INPUTS), model)
    out = tmp_path / "out.onnx"
    args = [a.format(out=out) for a in COMMANDS[command]]
    code, stdout, stderr = invoke(command, model, *args, "--shape", shape)
    assert code == 2, (stdout, stderr)
    assert message in stdout + stderr
    if command != "check":  # check reports it as the model's error, beside its summary table
        assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert not out.exists()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_shape_of_an_input_at_its_rank_is_taken(tmp_path, command):
    model = tmp_path / "m.onnx"
    onnx.save(parse(TWO_INPUTS), model)
    args = [a.format(out=tmp_path / "out.onnx") for a in COMMANDS[command]]
    code, stdout, stderr = invoke(command, model, *args, "--shape", "X=2x4")
    assert code == 0, (stdout, stderr)


def test_set_shape_refuses_the_same(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(parse(TWO_INPUTS), model)
    for shape, message in [("Xx=2x4", "no such graph input"), ("X=2x4x1", "3 dims given, the input has rank 2")]:
        code, _, stderr = invoke("set-shape", model, "--shape", shape, "-o", Path(tmp_path) / "s.onnx")
        assert code == 2 and message in stderr and stderr.count("\n") == 1


@pytest.mark.parametrize("command", ["diagnose", "check", "repair"])
def test_a_configured_shape_of_an_input_this_model_lacks_is_no_error(tmp_path, monkeypatch, command):
    """A glob's `shapes` apply to every model it matches, some of which have other inputs: only the command line's
    names must be this model's. A configured shape of the wrong rank is still refused."""
    model = tmp_path / "m.onnx"
    onnx.save(parse(TWO_INPUTS), model)
    monkeypatch.chdir(tmp_path)
    extra = ["--dry-run"] if command == "repair" else []
    (tmp_path / "pyproject.toml").write_text('[tool.graphfix.inputs."*.onnx"]\nshapes = { audio = "1x16000" }\n')
    code, stdout, stderr = invoke(command, model, *extra)
    assert code == 0, (stdout, stderr)
    (tmp_path / "pyproject.toml").write_text('[tool.graphfix.inputs."*.onnx"]\nshapes = { X = "2x4x1" }\n')
    code, stdout, stderr = invoke(command, model, *extra)
    assert code == 2 and "X: 3 dims given, the input has rank 2" in stdout + stderr, (stdout, stderr)


@pytest.mark.parametrize("command", ["diagnose", "check", "repair", "bench"])
def test_with_several_models_a_shape_applies_to_those_that_have_the_input(tmp_path, command):
    """`bench model.onnx encoder.onnx --shape tokens=1x8` (the encoder-decoder sample's README): the encoder takes
    no tokens. With several models a name only some of them have is theirs; a model's rank is still checked."""
    both, one = tmp_path / "both.onnx", tmp_path / "one.onnx"
    onnx.save(parse(TWO_INPUTS), both)
    onnx.save(parse("""<ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 4] X) => (float[N, 4] Y) { Y = Relu(X) }"""), one)
    extra = {"repair": ["--dry-run"], "bench": ["--runs", "1", "--warmup", "0"]}.get(command, [])
    code, stdout, stderr = invoke(command, both, one, *extra, "--shape", "Z=2x4")
    assert code == 0, (stdout, stderr)
    code, stdout, stderr = invoke(command, both, one, *extra, "--shape", "Z=2x4x1")
    assert code == 2 and "Z: 3 dims given, the input has rank 2" in stdout + stderr, (stdout, stderr)
