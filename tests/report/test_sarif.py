"""`graphfix check --format sarif`: SARIF 2.1.0 that validates against the OASIS schema and that code scanning can
place (rules with their docs, results with ruleId/level/message, the model file and its nodes as locations)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import onnx
import pytest
from click.testing import CliRunner
from conftest import parse

from graphfix.cli import check as check_cli
from graphfix.cli import cli
from graphfix.core.registry import load_rules
from graphfix.report.sarif import artifact_uri, rule_descriptors

if "check" not in cli.commands:  # until the lead registers it in graphfix/cli/__init__.py
    cli.add_command(check_cli.command)

# The OASIS SARIF 2.1.0 schema (errata 01), vendored: tests run offline.
SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "data" / "sarif-schema-2.1.0.json").read_text())
HEADER = '< ir_version: 8, opset_import: ["" : 17] >\n'


def validate(log: dict) -> None:
    jsonschema.Draft4Validator(SCHEMA, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER).validate(log)


@pytest.fixture(scope="module")
def sarif(tmp_path_factory):
    """SARIF for a folder with a healthy, a truncated (static), a runtime-failing and an unreadable model."""
    root = tmp_path_factory.mktemp("repo")
    (root / "models dir").mkdir()
    models = {
        "healthy": "g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }",
        "truncated": "g (float[N, 4] x) => (float[1] y) { y = Constant <value = float[1] {1.0}> () }",
        "shape_input": "g (float[N, 6] x, int64[2] s) => (float[A, B] y) { y = Reshape(x, s) }",
    }
    for name, text in models.items():
        onnx.save(parse(HEADER + text), root / "models dir" / f"{name}.onnx")
    (root / "models dir" / "empty.onnx").write_bytes(b"")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        result = CliRunner().invoke(cli, ["check", "models dir", "--format", "sarif", "--jobs", "1"])
    assert result.exit_code == 2, result.output  # the unreadable model
    return json.loads(result.stdout)


def test_validates_against_the_sarif_2_1_0_schema(sarif):
    validate(sarif)
    assert sarif["version"] == "2.1.0"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("runs", 0, "results", 0, "level"), "info"),  # SARIF says "note"
        (("runs", 0, "results", 0, "message"), "a bare string"),
        (("runs", 0, "tool", "driver", "name"), None),
        (("version",), "2.2.0"),
    ],
)
def test_the_schema_rejects_what_code_scanning_would(sarif, path, value):
    broken = copy.deepcopy(sarif)
    target = broken
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_driver_lists_every_rule_with_its_documentation(sarif):
    driver = sarif["runs"][0]["tool"]["driver"]
    assert driver["name"] == "graphfix"
    ids = [rule["id"] for rule in driver["rules"]]
    assert ids == sorted(set(ids))
    registered = {rule.code: rule for rule in load_rules()[0]}
    assert set(registered) | {"GF000", "GF005"} <= set(ids)
    for descriptor in driver["rules"]:
        if descriptor["id"] in registered:
            rule = registered[descriptor["id"]]
            assert descriptor["name"] == rule.name
            assert descriptor["help"]["text"] == rule.docs()
            assert descriptor["shortDescription"]["text"] == rule.summary()
    assert rule_descriptors() == driver["rules"]


def test_results_name_rule_level_message_model_file_and_nodes(sarif):
    run = sarif["runs"][0]
    results = run["results"]
    by_file = {}
    for result in results:
        location = result["locations"][0]
        by_file.setdefault(location["physicalLocation"]["artifactLocation"]["uri"], []).append(result)
        assert run["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] in {"error", "warning", "note"}
        assert result["message"]["text"]
    assert set(by_file) == {"models%20dir/truncated.onnx", "models%20dir/shape_input.onnx"}  # relative, encoded
    truncated = by_file["models%20dir/truncated.onnx"]
    assert [(r["ruleId"], r["level"]) for r in truncated] == [("GF001", "error"), ("GF001", "warning")]
    runtime = {r["ruleId"]: r for r in by_file["models%20dir/shape_input.onnx"]}
    assert runtime["GF004"]["locations"][0]["logicalLocations"][0]["name"] == "Reshape_0"
    assert "Fix: " in runtime["GF004"]["message"]["text"]
    fingerprints = [r["partialFingerprints"]["graphfixFinding/v1"] for r in results]
    assert len(set(fingerprints)) == len(fingerprints)


def test_unreadable_models_are_tool_notifications(sarif):
    invocation = sarif["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False
    [note] = invocation["toolExecutionNotifications"]
    assert note["level"] == "error" and "empty.onnx" in note["message"]["text"]


def test_a_clean_run_is_valid_and_empty(tmp_path, monkeypatch):
    onnx.save(parse(HEADER + "g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }"), tmp_path / "ok.onnx")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["check", "ok.onnx", "--format", "sarif"])
    assert result.exit_code == 0
    log = json.loads(result.stdout)
    validate(log)
    assert log["runs"][0]["results"] == [] and log["runs"][0]["invocations"][0]["executionSuccessful"] is True


def test_paths_outside_the_checkout_become_file_uris(tmp_path):
    assert artifact_uri(tmp_path / "a b.onnx", tmp_path / "elsewhere").startswith("file:///")
    assert artifact_uri(tmp_path / "m" / "a.onnx", tmp_path) == "m/a.onnx"
