"""Issue #20 item 9: a model that crashes onnxruntime costs that model only.

Integer Div(INT_MIN, -1) between initializers raises SIGFPE in onnxruntime's constant folding. Each command must
report it as one line with exit 2, keep the healthy model's result, write nothing for the crashed one and leave
no scratch or staging folder behind.
"""

from __future__ import annotations

import json

import onnx
import onnx.parser
import pytest

# Q depends on X, so no rule finds an error that would stop `repair` before onnxruntime runs (an output computed
# from constants alone is an ERROR finding, and a model with one is not repaired)
SIGFPE_MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] X) => (float[N, 4] Y, int32[2] Q) <int32[1] A = {-2147483648}, int32[1] B = {-1}> {
    Y = Relu(X)  D = Div(A, B)  S = Shape(X)  M = Cast<to = 6>(S)  Q = Add(D, M)
}"""
HEALTHY = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] X) => (float[N, 4] Y) { Y = Relu(X) }"""


@pytest.fixture
def models(sandbox):
    crash, healthy = sandbox.model_dir / "crash.onnx", sandbox.model_dir / "healthy.onnx"
    onnx.save(onnx.parser.parse_model(SIGFPE_MODEL), crash)
    onnx.save(onnx.parser.parse_model(HEALTHY), healthy)
    return str(crash), str(healthy)


def leftovers(sandbox) -> list[str]:
    return sorted(p.name for folder in (sandbox.tmp, sandbox.model_dir, sandbox.cwd) for p in folder.iterdir()
                  if "graphfix" in p.name)


def crash_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "crash.onnx" in line and "SIGFPE" in line]


@pytest.mark.parametrize("args", [["diagnose"], ["check", "--jobs", "1"], ["check", "--jobs", "2"]])
def test_the_crash_is_one_line_and_the_healthy_model_is_still_reported(sandbox, models, args):
    done = sandbox.run(*args, *models)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(crash_lines(done.stderr)) == 1, done.stderr
    assert "healthy.onnx: no findings" in done.stdout, done.stdout
    assert leftovers(sandbox) == []


def test_check_json_keeps_both_models(sandbox, models):
    done = sandbox.run("check", "--jobs", "2", "--format", "json", *models)
    assert done.returncode == 2, done.stderr
    report = {m["path"]: m for m in json.loads(done.stdout)["models"]}
    assert "SIGFPE" in report[models[0]]["error"]
    assert report[models[1]]["error"] is None and report[models[1]]["findings"] == []


def test_repair_reports_the_crash_and_writes_nothing(sandbox, models):
    out = sandbox.model_dir / "out" / "fixed.onnx"
    done = sandbox.run("repair", models[0], "-o", str(out))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(crash_lines(done.stderr)) == 1, done.stderr
    assert not out.exists()
    assert leftovers(sandbox) == [] and not out.parent.exists()  # made for the output, removed


@pytest.mark.parametrize("where", [["-o", "new1/new2/fixed.onnx"], ["--output-dir", "new1/new2"]])
def test_a_crashed_repair_leaves_no_folder_it_made_for_its_output(sandbox, models, where):
    """The worker made new1/new2 for its output, then crashed: they stayed, empty (helper 66). They go now, and a
    folder the user made beside them stays."""
    (sandbox.model_dir / "theirs").mkdir()
    done = sandbox.run("repair", models[0], *[str(sandbox.model_dir / w) if "new" in w else w for w in where])
    assert done.returncode == 2 and len(crash_lines(done.stderr)) == 1, done.stderr
    assert sorted(p.name for p in sandbox.model_dir.iterdir()) == ["crash.onnx", "healthy.onnx", "theirs"]
    assert leftovers(sandbox) == [] and sandbox.touched() == []


def test_repair_goes_on_with_the_next_model(sandbox, models):
    done = sandbox.run("repair", "--output-dir", str(sandbox.root / "fixed"), *models)
    assert done.returncode == 2, done.stderr
    assert len(crash_lines(done.stderr)) == 1, done.stderr
    assert sorted(p.name for p in (sandbox.root / "fixed").iterdir()) == ["healthy.onnx"]


@pytest.mark.parametrize("args", [["set-shape", "--shape", "X=3x4", "-o", "OUT"], ["bench", "--runs", "1"]])
def test_single_model_commands_report_the_crash(sandbox, models, args):
    out = sandbox.model_dir / "out.onnx"
    done = sandbox.run(args[0], models[0], *[str(out) if a == "OUT" else a for a in args[1:]])
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(crash_lines(done.stderr)) == 1, done.stderr
    assert not out.exists() and leftovers(sandbox) == []
