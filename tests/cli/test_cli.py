"""The CLI end to end: JSON schemas, exit codes, where outputs go, and a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import op_types, parse, run

from graphfix.cli import cli

HEALTHY = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] X) => (float[N, 4] Y) <float[4] B = {1.0, 2.0, 3.0, 4.0}> { Y = Add(X, B) }"""
DEAD_NODE = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] X) => (float[N, 4] Y) { Y = Relu(X)  D = Neg(X) }"""
CONSTANT_OUTPUT = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] X) => (float[N, 4] Y, float[1] Z) <float[1] C = {2.0}> { Y = Relu(X)  Z = Identity(C) }"""

FINDING_KEYS = {"rule", "name", "severity", "message", "nodes", "tensors", "shapes", "fixable", "fix", "hint",
                "candidates"}
REPAIR_KEYS = {"path", "output", "status", "applied", "findings_before", "findings_after", "simplify", "validation",
               "notes", "error"}


def write(folder: Path, text: str, name: str = "model.onnx") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(parse(text), path)
    return path


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def test_diagnose_json_schema_and_fail_on(tmp_path):
    model = write(tmp_path, DEAD_NODE)
    code, out = invoke("diagnose", "--static", "--format", "json", model)
    doc = json.loads(out)
    assert set(doc) == {"graphfix", "models"} and doc["models"][0]["error"] is None
    finding = doc["models"][0]["findings"][0]
    assert set(finding) == FINDING_KEYS
    assert (finding["rule"], finding["severity"], finding["nodes"]) == ("GF001", "warning", ["Neg_D"])
    assert code == 0  # a warning does not fail at the default --fail-on error
    assert invoke("diagnose", "--static", "--fail-on", "warning", model)[0] == 1
    assert invoke("diagnose", "--static", "--fail-on", "never", write(tmp_path, CONSTANT_OUTPUT, "c.onnx"))[0] == 0
    assert invoke("diagnose", "--static", write(tmp_path, CONSTANT_OUTPUT, "c.onnx"))[0] == 1


def test_diagnose_folder_recurses(tmp_path):
    write(tmp_path / "a", HEALTHY)
    write(tmp_path / "b" / "deep", DEAD_NODE)
    code, out = invoke("diagnose", "--static", "--format", "json", tmp_path)
    paths = [Path(m["path"]).relative_to(tmp_path).as_posix() for m in json.loads(out)["models"]]
    assert paths == ["a/model.onnx", "b/deep/model.onnx"] and code == 0


def test_rules_json():
    code, out = invoke("rules", "--format", "json")
    rows = json.loads(out)["rules"]
    assert code == 0 and set(rows[0]) == {"code", "name", "severity", "fixable", "summary"}
    by_code = {row["code"]: row for row in rows}
    assert by_code["GF001"]["fixable"] is True and by_code["GF005"]["severity"] == "warning"


def test_repair_writes_validated_model_and_reports_json(tmp_path):
    model = write(tmp_path, DEAD_NODE)
    out = tmp_path / "out" / "fixed.onnx"
    code, text = invoke("repair", model, "-o", out, "--format", "json")
    entry = json.loads(text)["models"][0]
    assert code == 0, text
    assert set(entry) == REPAIR_KEYS
    assert entry["status"] == "repaired" and entry["output"] == str(out)
    assert entry["applied"][0]["rule"] == "GF001" and entry["validation"]["passed"] is True
    fixed = onnx.load(out)
    assert op_types(fixed) == ["Relu"]
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(run(fixed, {"X": x})[0], np.maximum(x, 0))


def test_healthy_model_is_written_unchanged(tmp_path):
    model = write(tmp_path, HEALTHY)
    out = tmp_path / "same.onnx"
    code, text = invoke("repair", model, "-o", out, "--format", "json")
    assert code == 0 and json.loads(text)["models"][0]["status"] == "unchanged"
    assert out.read_bytes() == model.read_bytes()


def test_output_dir_keeps_relative_paths(tmp_path):
    write(tmp_path / "in" / "x", DEAD_NODE)
    write(tmp_path / "in" / "y", HEALTHY)
    code, _ = invoke("repair", tmp_path / "in", "--output-dir", tmp_path / "out")
    assert code == 0
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.onnx")) == [
        "x/model.onnx", "y/model.onnx"]


def test_in_place_and_dry_run(tmp_path):
    model = write(tmp_path, DEAD_NODE)
    before = model.read_bytes()
    code, text = invoke("repair", model, "--dry-run", "--format", "json")
    assert code == 0 and json.loads(text)["models"][0]["output"] is None
    assert model.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert invoke("repair", model, "--in-place")[0] == 0
    assert op_types(onnx.load(model)) == ["Relu"]


def test_only_and_skip_select_rules(tmp_path):
    model = write(tmp_path, DEAD_NODE)
    _, out = invoke("diagnose", "--static", "--format", "json", "--skip", "GF001", model)
    assert json.loads(out)["models"][0]["findings"] == []
    _, out = invoke("diagnose", "--static", "--format", "json", "--only", "truncated-graph", model)
    assert json.loads(out)["models"][0]["findings"]


@pytest.mark.parametrize("args, code", [(["diagnose", "--static", "{healthy}"], 0),
                                        (["diagnose", "--static", "{broken}"], 1),
                                        (["diagnose", "--static", "{missing}"], 2)])
def test_console_script_exit_codes(tmp_path, args, code):
    paths = {"healthy": write(tmp_path, HEALTHY), "broken": write(tmp_path, CONSTANT_OUTPUT, "b.onnx"),
             "missing": tmp_path / "missing.onnx"}
    exe = Path(sys.executable).parent / "graphfix"  # the console script installed beside this interpreter
    proc = subprocess.run([str(exe), *[a.format(**paths) for a in args]], capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    if code == 2:
        assert proc.stderr.strip().count("\n") == 0 and "no such file" in proc.stderr
