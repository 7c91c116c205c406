"""[tool.graphfix] in pyproject.toml: finding it, checking it, matching globs, and command-line precedence."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from graphfix.cli.options import config_options, current_config, fail_on_option, probe_inputs, rule_selection
from graphfix.core.config import Config, filter_findings, find_config, load_config, probe_options_for
from graphfix.core.errors import UsageError
from graphfix.core.rule import Finding, Severity
from graphfix.validate import ValidationOptions

FULL = """
[project]
name = "models"

[tool.graphfix]
select = ["GF001", "broadcast-mismatch", "GF005"]
ignore = ["gf002"]
fail-on = "warning"
rtol = 0.01
atol = 1e-5

[tool.graphfix.inputs."asr/*.onnx"]
shapes = { audio = "1x16000" }
values = { lengths = "data/lengths.npy" }

[tool.graphfix.inputs."asr/big.onnx"]
shapes = { audio = "1x32000" }

[tool.graphfix.per-file-ignores]
"legacy/*.onnx" = ["GF004"]
"model.onnx" = ["GF001", "GF004"]
"""


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(text)
    return folder / "pyproject.toml"


def test_full_config_is_parsed(tmp_path):
    config = load_config(write(tmp_path, FULL))
    assert config.select == ("GF001", "GF003", "GF005")  # names and lower case become codes
    assert config.ignore == ("GF002",)
    assert (config.fail_on, config.rtol, config.atol) == ("warning", 0.01, 1e-5)
    assert config.root == tmp_path


def test_found_from_the_current_folder_upwards(tmp_path, monkeypatch):
    top = write(tmp_path, FULL)
    (tmp_path / "pkg" / "deep").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "pkg" / "deep")
    assert find_config() == top
    assert load_config().fail_on == "warning"
    assert load_config(search=False) == Config()


def test_the_first_pyproject_ends_the_search_even_without_the_table(tmp_path, monkeypatch):
    write(tmp_path, FULL)
    write(tmp_path / "pkg", "[project]\nname = 'inner'\n")  # the project's own file: nothing above it applies
    (tmp_path / "pkg" / "deep").mkdir()
    monkeypatch.chdir(tmp_path / "pkg" / "deep")
    assert find_config() is None


def test_no_config_anywhere_gives_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config() is None
    assert load_config() == Config()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[tool.graphfix]\nfail_on = "error"\n', "unknown key 'fail_on'"),
        ('[tool.graphfix]\nselect = ["GF001"]\nexclude = ["x"]\n', "unknown key 'exclude'"),
        ('[tool.graphfix.inputs."*.onnx"]\nshape = { x = "1x2" }\n', "unknown key 'shape'"),
        ('[tool.graphfix]\nfail-on = "fatal"\n', "fail-on: expected one of"),
        ('[tool.graphfix]\nrtol = "1e-3"\n', "rtol: expected a number"),
        ('[tool.graphfix]\natol = -1\n', "atol: expected a number"),
        ('[tool.graphfix]\nselect = "GF001"\n', "select: expected a list"),
        ('[tool.graphfix]\nignore = ["GF999"]\n', "ignore: unknown rule 'GF999'"),
        ('[tool.graphfix.per-file-ignores]\n"a/*.onnx" = ["nope"]\n', "unknown rule 'nope'"),
        ('[tool.graphfix.inputs."*.onnx"]\nshapes = { x = "1xx2" }\n', "bad shape '1xx2'"),
        ('[tool.graphfix.inputs."*.onnx"]\nshapes = { x = 3 }\n', "shapes: expected a table"),
        ("[tool.graphfix\n", "cannot read the configuration"),
    ],
)
def test_bad_configuration_is_a_usage_error_that_names_the_key(tmp_path, text, named):
    with pytest.raises(UsageError, match=r"pyproject\.toml") as error:
        load_config(write(tmp_path, text))
    assert named in str(error.value)
    assert error.value.exit_code == 2


@pytest.mark.parametrize(
    ("model", "shapes", "ignore"),
    [
        ("asr/small.onnx", {"audio": (1, 16000)}, ()),
        ("asr/big.onnx", {"audio": (1, 32000)}, ()),  # the later glob wins
        ("legacy/old.onnx", {}, ("GF004",)),
        ("legacy/sub/old.onnx", {}, ("GF004",)),  # fnmatch: * crosses folders
        ("other/model.onnx", {}, ("GF001", "GF004")),  # a glob without / matches the file name
        ("vision/resnet.onnx", {}, ()),
    ],
)
def test_globs_are_matched_relative_to_the_config_folder(tmp_path, model, shapes, ignore):
    config = load_config(write(tmp_path, FULL))
    settings = config.for_model(tmp_path / model)
    assert settings.shapes == shapes
    assert settings.ignore == ignore
    if model.startswith("asr/"):
        assert settings.values == {"lengths": tmp_path / "data" / "lengths.npy"}


def test_relative_model_paths_are_resolved_from_the_current_folder(tmp_path, monkeypatch):
    config = load_config(write(tmp_path, FULL))
    monkeypatch.chdir(tmp_path / "..")
    assert config.for_model(Path(tmp_path.name) / "legacy" / "a.onnx").ignore == ("GF004",)


def test_probe_options_merge_config_under_the_command_line(tmp_path):
    config = load_config(write(tmp_path, FULL))
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "lengths.npy", np.array([16000], dtype=np.int64))
    base = ValidationOptions(shapes={"audio": (1, 8000)}, rtol=0.5)
    merged = probe_options_for(config, tmp_path / "asr" / "m.onnx", base)
    assert merged.shapes == {"audio": (1, 8000)}  # the command line wins
    assert merged.inputs["lengths"].tolist() == [16000]
    assert merged.rtol == 0.5
    untouched = probe_options_for(config, tmp_path / "vision" / "m.onnx", ValidationOptions())
    assert untouched.shapes == {} and untouched.inputs == {}


def test_missing_value_file_names_the_config_and_the_input(tmp_path):
    config = load_config(write(tmp_path, FULL))
    with pytest.raises(UsageError, match=r"inputs: value of .lengths.*lengths\.npy"):
        probe_options_for(config, tmp_path / "asr" / "m.onnx", ValidationOptions())


def test_filter_findings_by_select_and_ignore():
    findings = [Finding(code, "x", Severity.ERROR, "m") for code in ("GF000", "GF001", "GF003", "GF005")]
    assert [f.rule for f in filter_findings(findings, ("GF001", "GF003"), ("GF003",))] == ["GF001"]
    assert [f.rule for f in filter_findings(findings, (), ("GF005",))] == ["GF000", "GF001", "GF003"]


@click.command()
@fail_on_option
@rule_selection
@probe_inputs
@config_options
def echo_settings(fail_on, only, skip, shapes, input_files, rtol, atol):
    click.echo(f"{fail_on} {','.join(only)} {','.join(skip)} {rtol} {atol} {current_config().path is not None}")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "warning GF001,GF003,GF005 GF002 0.01 1e-05 True"),  # everything from the file
        (["--fail-on", "error"], "error GF001,GF003,GF005 GF002 0.01 1e-05 True"),  # the command line wins
        (["--fail-on", "warning", "--rtol", "0.001"], "warning GF001,GF003,GF005 GF002 0.001 1e-05 True"),  # = default
        (["--only", "GF004", "--skip", "GF001"], "warning GF004 GF001 0.01 1e-05 True"),
        (["--isolated"], "error   0.001 0.0001 False"),
    ],
)
def test_command_line_overrides_the_configuration(tmp_path, monkeypatch, args, expected):
    write(tmp_path, FULL)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(echo_settings, args)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == expected


def test_explicit_config_file_and_conflicts(tmp_path, monkeypatch):
    other = write(tmp_path / "ci", '[tool.graphfix]\nfail-on = "info"\n')
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(echo_settings, ["--config", str(other)])
    assert result.output.startswith("info ")
    result = CliRunner().invoke(echo_settings, ["--config", str(tmp_path / "missing.toml")])
    assert isinstance(result.exception, UsageError) and "no such file" in str(result.exception)
    result = CliRunner().invoke(echo_settings, ["--config", str(other), "--isolated"])
    assert isinstance(result.exception, UsageError)
