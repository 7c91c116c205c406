"""Every bad input is refused with exit 2 and one line on stderr: no traceback, no output, input untouched."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import parse

from graphfix.cli import cli

MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] X) => (float[N, 4] Y) <float[4] B = {1.0, 2.0, 3.0, 4.0}> { Y = Add(X, B) }"""


def external_model(folder: Path, location: str = "model.onnx.data", data: bytes | None = None) -> Path:
    """A model whose initializer W (256 floats) lives in external data at `location`."""
    model = parse("""<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 256] X, float[256] W) => (float[N, 256] Y) { Y = Add(X, W) }""")
    weights = np.arange(256, dtype=np.float32)
    del model.graph.input[1]
    model.graph.initializer.append(onnx.numpy_helper.from_array(weights, "W"))
    onnx.external_data_helper.set_external_data(model.graph.initializer[0], location=location, offset=0,
                                                length=weights.nbytes)
    model.graph.initializer[0].ClearField("raw_data")
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    if data is None:
        data = weights.tobytes()
    if not location.startswith("/") and ".." not in location and data:
        (folder / location).write_bytes(data)
    return path


def _good(folder: Path) -> Path:
    path = folder / "model.onnx"
    onnx.save(parse(MODEL), path)
    return path


def _truncated(folder: Path) -> Path:
    blob = _good(folder).read_bytes()
    path = folder / "model.onnx"
    path.write_bytes(blob[: len(blob) // 2])
    return path


def _lfs(folder: Path) -> Path:
    path = folder / "model.onnx"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12345\n")
    return path


def _set_model_field(folder: Path, **fields) -> Path:
    model = parse(MODEL)
    for key, value in fields.items():
        if key == "opset":
            model.opset_import[0].version = value
        else:
            setattr(model, key, value)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _symlink_outside(folder: Path) -> Path:
    secret = folder.parent / f"{folder.name}-secret.bin"
    secret.write_bytes(np.arange(256, dtype=np.float32).tobytes())
    (folder / "model.onnx.data").symlink_to(secret)
    return external_model(folder, data=b"")


def _hardlink(folder: Path) -> Path:
    other = folder.parent / f"{folder.name}-other.bin"
    other.write_bytes(np.arange(256, dtype=np.float32).tobytes())
    os.link(other, folder / "model.onnx.data")
    return external_model(folder, data=b"")


def _dotfile(folder: Path, location: str = ".git/config", link: bool = False) -> Path:
    """Security review 148: external data in a repository's `.git/config` (a CI checkout's token), read as an int64
    shape and printed as numbers; or a plainly named link to it inside the folder."""
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_bytes(np.arange(256, dtype=np.float32).tobytes())
    if link:
        (folder / location).symlink_to(folder / ".git" / "config")
    return external_model(folder, location=location, data=b"")


def _write(folder: Path, content: bytes) -> Path:
    path = folder / "model.onnx"
    path.write_bytes(content)
    return path


def _output_named_like_an_input(folder: Path) -> Path:
    """What the dynamo exporter writes for `output_names` that reuse an input's (helper 81): onnxruntime refuses it
    ("Duplicate definition"); graphfix said "node ... is on a cycle"."""
    from onnx import TensorProto, helper

    path = folder / "model.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["y"], ["z"]), helper.make_node("Neg", ["z"], ["y"])], "g",
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _empty_folder_named_like_model(folder: Path) -> Path:
    path = folder / "model.onnx"
    path.mkdir()
    return path


CASES = {
    "missing path": (lambda d: d / "nope.onnx", "no such file"),
    "folder without models": (_empty_folder_named_like_model, "is a folder with no .onnx model"),
    "zero-byte file": (lambda d: _write(d, b""), "empty file"),
    "text file": (lambda d: _write(d, b"hello\n"), "not an ONNX model"),
    "truncated protobuf": (_truncated, "damaged or truncated"),
    "git lfs pointer": (_lfs, "Git LFS pointer"),
    "missing external data": (lambda d: external_model(d, data=b""), "does not exist"),
    "short external data": (lambda d: external_model(d, data=b"\0" * 100), "is 100 bytes but tensor 'W' needs"),
    "absolute external path": (lambda d: external_model(d, location="/etc/passwd"), "absolute path"),
    "dotdot external path": (lambda d: external_model(d, location="../x.data"), "'..'"),
    "symlink outside": (_symlink_outside, "symbolic link"),
    "dotfile external path": (_dotfile, "hidden file or folder ('.git/config')"),
    "link to a dotfile": (lambda d: _dotfile(d, "w.bin", link=True), "hidden file or folder ('w.bin' -> "),
    "hard link": (_hardlink, "hard link"),
    "unsupported IR": (lambda d: _set_model_field(d, ir_version=99), "IR version 99"),
    "unsupported opset": (lambda d: _set_model_field(d, opset=99), "opset 99"),
    "output named like an input": (_output_named_like_an_input, "tensor 'y' is defined twice"),
}


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize("command", ["diagnose", "diagnose-static", "repair"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_cleanly(tmp_path, case, command):
    folder = tmp_path / "in"
    folder.mkdir()
    make, expected = CASES[case]
    model = make(folder)
    before = _snapshot(tmp_path)
    out = tmp_path / "out" / "fixed.onnx"
    args = {"diagnose": ["diagnose", str(model)], "diagnose-static": ["diagnose", "--static", str(model)],
            "repair": ["repair", str(model), "-o", str(out)]}[command]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert expected in result.output
    assert not out.exists()
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["truncated protobuf", "short external data", "symlink outside"])
def test_bad_input_through_a_real_process(tmp_path, case):
    folder = tmp_path / "in"
    folder.mkdir()
    make, expected = CASES[case]
    model = make(folder)
    out = tmp_path / "fixed.onnx"
    proc = subprocess.run([sys.executable, "-m", "graphfix", "repair", str(model), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_output_never_overwrites_input_without_in_place(tmp_path):
    model = _good(tmp_path)
    before = model.read_bytes()
    result = CliRunner().invoke(cli, ["repair", str(model), "-o", str(model)])
    assert result.exit_code == 2 and "use --in-place" in result.output
    assert model.read_bytes() == before


@pytest.mark.parametrize("command", [["set-shape", "--shape", "X=1x4"], ["extract", "--inputs", "X", "--outputs", "Y"]])
def test_a_command_without_in_place_does_not_suggest_it(tmp_path, command):
    """set-shape and extract have no --in-place: refusing to overwrite the input, they do not name it (helper
    58)."""
    model = _good(tmp_path)
    before = model.read_bytes()
    result = CliRunner().invoke(cli, [command[0], str(model), *command[1:], "-o", str(model)])
    assert result.exit_code == 2 and "would overwrite the input" in result.output, result.output
    assert "--in-place" not in result.output
    assert model.read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["repair", "{m}"], "say where to write"),
    (["repair", "{m}", "-o", "a.onnx", "--output-dir", "d"], "only one of"),
    (["diagnose", "--only", "GF999", "{m}"], "unknown rule 'GF999'"),
    (["repair", "{m}", "--dry-run", "--shape", "X"], "NAME=VALUE"),
    (["diagnose", "--format", "yaml", "{m}"], "Invalid value"),
])
def test_usage_errors_exit_2(tmp_path, args, message):
    model = _good(tmp_path)
    result = CliRunner().invoke(cli, [a.format(m=model) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
