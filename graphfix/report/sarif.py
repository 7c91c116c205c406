"""SARIF 2.1.0 for `graphfix check --format sarif`, the format GitHub code scanning reads.

One run whose driver is graphfix, one `rules` entry per rule (its documentation as help), one result per finding:
the model file as physical location (relative to the current folder, as GitHub expects paths from the checkout
root) and the node names as logical locations. Models that could not be read become tool notifications.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from graphfix.core.version import VERSION

SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
LEVELS = {"error": "error", "warning": "warning", "info": "note"}


def rule_descriptors() -> list[dict[str, Any]]:
    """Every registered rule (runtime-only ones included), sorted by code."""
    from graphfix.core.registry import load_rules

    rules, _ = load_rules()
    return [_descriptor(rule.code, rule.name, rule.summary(), rule.docs(), rule.severity.value) for rule in rules]


def sarif_log(outcomes: list, root: Path | None = None) -> dict[str, Any]:
    """The SARIF log of `outcomes` (graphfix.pipeline.batch.Outcome); paths relative to `root` (default: cwd)."""
    root = (root or Path.cwd()).resolve()
    rules = rule_descriptors()
    index = {rule["id"]: i for i, rule in enumerate(rules)}
    results = [_result(o.path, f, index, root) for o in outcomes for f in o.findings]
    notifications = [
        {"level": "error", "message": {"text": f"{o.path}: {o.error}"},
         "locations": [{"physicalLocation": {"artifactLocation": {"uri": artifact_uri(o.path, root)}}}]}
        for o in outcomes if o.error
    ]
    invocation: dict[str, Any] = {"executionSuccessful": not notifications}
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "graphfix", "version": VERSION, "semanticVersion": VERSION,
                                "rules": rules}},
            "invocations": [invocation],
            "results": results,
            "columnKind": "unicodeCodePoints",
        }],
    }


def artifact_uri(path: str | Path, root: Path) -> str:
    """A relative URI under `root` (what GitHub resolves against the checkout), else an absolute file: URI."""
    absolute = Path(os.path.abspath(path))
    try:
        return quote(absolute.relative_to(root).as_posix())
    except ValueError:
        return absolute.as_uri()


def _descriptor(code: str, name: str, summary: str, docs: str, severity: str) -> dict[str, Any]:
    return {
        "id": code,
        "name": name,
        "shortDescription": {"text": summary or name},
        "fullDescription": {"text": docs or summary or name},
        "help": {"text": docs or summary or name, "markdown": docs or summary or name},
        "defaultConfiguration": {"level": LEVELS[severity]},
        "properties": {"tags": ["onnx", "deployment"]},
    }


def _result(path: str, finding, index: dict[str, int], root: Path) -> dict[str, Any]:
    uri = artifact_uri(path, root)
    text = finding.message + (f" Fix: {finding.hint}" if finding.hint else "")
    location: dict[str, Any] = {
        # A model is binary: the file is the location; line 1 lets code scanning place the alert on it.
        "physicalLocation": {"artifactLocation": {"uri": uri}, "region": {"startLine": 1}},
    }
    if finding.nodes:
        location["logicalLocations"] = [{"name": node, "fullyQualifiedName": f"{uri}:{node}", "kind": "element"}
                                        for node in finding.nodes]
    result: dict[str, Any] = {
        "ruleId": finding.rule,
        "level": LEVELS[finding.severity.value],
        "message": {"text": text},
        "locations": [location],
        "partialFingerprints": {"graphfixFinding/v1": _fingerprint(uri, finding)},
        "properties": {"tensors": list(finding.tensors), "shapes": finding.to_json()["shapes"],
                       "fixable": finding.fixable},
    }
    if finding.rule in index:
        result["ruleIndex"] = index[finding.rule]
    return result


def _fingerprint(uri: str, finding) -> str:
    """Stable across runs: file, rule, nodes and tensors (not the message, which may carry probe sizes)."""
    key = "\0".join([uri, finding.rule, *finding.nodes, "|", *finding.tensors])
    return hashlib.sha256(key.encode()).hexdigest()[:32]
