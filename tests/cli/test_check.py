"""`graphfix check`: the pre-deployment gate — verdicts, configuration, batches, output formats, input errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import parse

from graphfix.cli import check as check_cli
from graphfix.cli import cli
from graphfix.pipeline import batch

if "check" not in cli.commands:  # until the lead registers it in graphfix/cli/__init__.py
    cli.add_command(check_cli.command)

HEADER = '< ir_version: 8, opset_import: ["" : 17] >\n'
MODELS = {
    # runs at every size, nothing to say
    "healthy": "g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }",
    # static error: the output is a value captured at export time (GF001), x unused (GF001 warning)
    "truncated": "g (float[N, 4] x) => (float[1] y) { y = Constant <value = float[1] {1.0}> () }",
    # a warning only: an input no node reads
    "unused": "g (float[N, 4] x, float[N, 4] cache) => (float[N, 4] y) { y = Relu(x) }",
    # statically fine; fails in onnxruntime unless `s` holds a shape that fits (runtime GF004 + GF000)
    "shape_input": "g (float[N, 6] x, int64[2] s) => (float[A, B] y) { y = Reshape(x, s) }",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    for name, text in MODELS.items():
        onnx.save(parse(HEADER + text), folder / f"{name}.onnx")
    np.save(folder / "s.npy", np.array([-1, 3], dtype=np.int64))
    return folder


@pytest.fixture
def project(tmp_path, models, monkeypatch):
    """A project folder holding the models; project(toml) writes its pyproject.toml. cwd is the project."""
    for item in models.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    monkeypatch.chdir(tmp_path)

    def configure(text: str = ""):
        (tmp_path / "pyproject.toml").write_text(text)
        return tmp_path

    return configure


def check(*args: str):
    return CliRunner().invoke(cli, ["check", "--jobs", "1", *args])


@pytest.mark.parametrize(
    ("model", "args", "code", "says"),
    [
        ("healthy", [], 0, "healthy.onnx: no findings"),
        ("truncated", [], 1, "error GF001 truncated-graph"),
        ("unused", [], 0, "warning GF001"),  # warnings do not fail by default
        ("unused", ["--fail-on", "warning"], 1, "1 failed"),
        ("shape_input", [], 1, "GF004 trace-baked-shape [Reshape_0]"),  # only the probe run finds it
        ("shape_input", ["--fail-on", "never"], 1, "fails at sizes"),  # a failed probe run fails regardless
        ("shape_input", ["--input", "s=s.npy"], 0, "no findings"),
        ("shape_input", ["--skip", "GF004,runtime-failure", "--fail-on", "never"], 0, "no findings"),
        ("truncated", ["--only", "GF003"], 0, "no findings"),
    ],
)
def test_verdicts(project, model, args, code, says):
    project()
    result = check(f"{model}.onnx", *args)
    assert result.exit_code == code, result.output
    assert says in result.output
    assert "graphfix check: 1 model," in result.stdout


@pytest.mark.parametrize(
    ("toml", "model", "args", "code"),
    [
        ('[tool.graphfix]\nfail-on = "warning"\n', "unused", [], 1),
        ('[tool.graphfix]\nfail-on = "warning"\n', "unused", ["--fail-on", "error"], 0),  # CLI overrides
        ('[tool.graphfix]\nfail-on = "warning"\n', "unused", ["--isolated"], 0),
        ('[tool.graphfix]\nignore = ["GF001"]\n', "truncated", [], 0),
        ('[tool.graphfix]\nignore = ["GF001"]\n', "truncated", ["--skip", "GF003"], 1),  # --skip replaces ignore
        ('[tool.graphfix]\nselect = ["GF003", "GF004"]\n', "truncated", [], 0),
        ('[tool.graphfix]\nselect = ["GF003", "GF004"]\n', "truncated", ["--only", "GF001"], 1),
        ('[tool.graphfix.per-file-ignores]\n"trunc*.onnx" = ["GF001"]\n', "truncated", [], 0),
        ('[tool.graphfix.per-file-ignores]\n"other/*.onnx" = ["GF001"]\n', "truncated", [], 1),
        ('[tool.graphfix.inputs."shape_*.onnx"]\nvalues = { s = "s.npy" }\n', "shape_input", [], 0),
        ('[tool.graphfix.inputs."shape_*.onnx"]\nvalues = { s = "s.npy" }\nshapes = { x = "3x6" }\n',
         "shape_input", [], 0),
        ('[tool.graphfix.inputs."other_*.onnx"]\nvalues = { s = "s.npy" }\n', "shape_input", [], 1),
        ('[tool.graphfix]\nignore = ["GF000", "GF004"]\nfail-on = "never"\n', "shape_input", [], 0),
    ],
)
def test_configuration_changes_the_verdict(project, toml, model, args, code):
    project(toml)
    result = check(f"{model}.onnx", *args)
    assert result.exit_code == code, result.output


def test_configuration_is_found_from_a_subfolder(project, monkeypatch):
    root = project('[tool.graphfix]\nfail-on = "warning"\n')
    (root / "sub").mkdir()
    monkeypatch.chdir(root / "sub")
    assert check("../unused.onnx").exit_code == 1


@pytest.mark.parametrize(
    ("toml", "args", "message"),
    [
        ('[tool.graphfix]\nfail_on = "warning"\n', [], "unknown key 'fail_on'"),
        ('[tool.graphfix.inputs."*.onnx"]\nvalues = { s = "missing.npy" }\n', [], "cannot read"),
        ("", ["missing.onnx"], "missing.onnx"),
        ("", ["nothing/*.onnx"], "no file matches this pattern"),
        ("", ["--skip", "GF999", "healthy.onnx"], "unknown rule 'GF999'"),
    ],
)
def test_input_and_configuration_errors_exit_2_with_one_line(project, toml, args, message):
    project(toml)
    result = check(*(args or ["healthy.onnx"]))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_an_unreadable_model_among_others_exits_2_and_the_others_are_still_checked(project):
    root = project()
    (root / "empty.onnx").write_bytes(b"")
    result = check("healthy.onnx", "empty.onnx", "truncated.onnx")
    assert result.exit_code == 2
    assert "healthy.onnx: no findings" in result.stdout and "truncated.onnx: 1 error" in result.stdout
    assert "3 models, 1 failed, 1 unreadable" in result.stdout


def test_folders_globs_and_a_process_pool_give_the_same_report(project):
    root = project()
    (root / "zoo" / "more").mkdir(parents=True)
    for name in ("healthy", "truncated", "unused"):
        (root / "zoo" / "more" / f"{name}.onnx").write_bytes((root / f"{name}.onnx").read_bytes())
    by_folder = CliRunner().invoke(cli, ["check", "zoo", "--format", "json", "--jobs", "1"])
    by_glob = CliRunner().invoke(cli, ["check", "zoo/**/*.onnx", "--format", "json", "--jobs", "2"])
    assert by_folder.exit_code == by_glob.exit_code == 1
    folder_models, glob_models = json.loads(by_folder.stdout)["models"], json.loads(by_glob.stdout)["models"]
    assert [m["path"] for m in glob_models] == sorted(m["path"] for m in glob_models)  # order kept by the pool
    assert [[f["rule"] for f in m["findings"]] for m in folder_models] == [
        [f["rule"] for f in m["findings"]] for m in glob_models
    ] == [[], ["GF001", "GF001"], ["GF001"]]


def test_summary_table_counts_models_findings_by_rule_and_time(project):
    project()
    result = check("healthy.onnx", "truncated.onnx", "unused.onnx", "shape_input.onnx")
    summary = result.stdout[result.stdout.index("graphfix check:"):]
    # (no GF000 for the probe's own cut graph, which had no output left: issue 14)
    assert summary.startswith("graphfix check: 4 models, 2 failed, 0 unreadable, 4 findings in ")
    assert " s\n" in summary
    rows = {line.split()[0]: line.split()[1:] for line in summary.splitlines()[2:]}
    assert rows == {"GF001": ["truncated-graph", "3"], "GF004": ["trace-baked-shape", "1"]}


def test_json_output_is_the_diagnose_schema(project):
    project()
    checked = CliRunner().invoke(cli, ["check", "truncated.onnx", "--format", "json"])
    diagnosed = CliRunner().invoke(cli, ["diagnose", "truncated.onnx", "--format", "json"])
    ours, theirs = json.loads(checked.stdout), json.loads(diagnosed.stdout)
    assert ours.keys() == theirs.keys() == {"graphfix", "models"}
    assert ours["models"][0].keys() == theirs["models"][0].keys()
    assert ours["models"][0]["findings"] == theirs["models"][0]["findings"]
    assert "graphfix check:" not in checked.stdout  # no summary table in JSON


def test_output_file(project):
    root = project()
    result = check("truncated.onnx", "--format", "sarif", "--output-file", "out/graphfix.report.sarif")
    assert result.exit_code == 1 and result.stdout == ""
    assert json.loads((root / "out" / "graphfix.report.sarif").read_text())["version"] == "2.1.0"


@pytest.mark.parametrize(("fmt", "tty", "shown"), [("text", True, True), ("text", False, False),
                                                   ("json", True, False), ("sarif", True, False)])
def test_progress_bar_only_for_text_on_a_terminal(monkeypatch, fmt, tty, shown):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    assert batch.should_show_progress(fmt) is shown


def test_progress_bar_is_drawn_on_a_terminal(project, monkeypatch, capsys):
    root = project()
    monkeypatch.setattr(batch, "should_show_progress", lambda fmt: True)
    monkeypatch.setattr("click._termui_impl.isatty", lambda stream: True)
    jobs = [batch.Job(root / f"{name}.onnx", ("GF001",), check_cli.rule_options_from()) for name in ("a", "b")]
    outcomes = batch.run_jobs(jobs, 1, progress=True)
    assert [o.error is not None for o in outcomes] == [True, True]
    assert "checking" in capsys.readouterr().err


def test_ci_style_run_of_the_installed_command(project):
    """What a CI job runs: the real `graphfix` process, a folder of models, SARIF to a file, the exit code."""
    import subprocess

    root = project()
    (root / "models").mkdir()
    (root / "models" / "ok.onnx").write_bytes((root / "healthy.onnx").read_bytes())
    command = [sys.executable, "-m", "graphfix", "check", "models", "--format", "sarif", "--output-file", "out.sarif"]
    healthy = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120)
    assert healthy.returncode == 0, healthy.stderr
    assert json.loads((root / "out.sarif").read_text())["runs"][0]["results"] == []
    (root / "models" / "bad.onnx").write_bytes((root / "truncated.onnx").read_bytes())
    broken = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120)
    assert broken.returncode == 1, broken.stderr
    results = json.loads((root / "out.sarif").read_text())["runs"][0]["results"]
    assert {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results} == {"models/bad.onnx"}
    text = subprocess.run(command[:5], cwd=root, capture_output=True, text=True, timeout=120)
    assert text.returncode == 1 and "models/bad.onnx: 1 error" in text.stdout and "2 models, 1 failed" in text.stdout
