"""The README's "Security model" names a test for each claim: every one named must exist, and the section must
name at least one test for each of its verbs, so a claim cannot outlive the test that held it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERBS = ("Executes", "Reads", "Writes", "Deletes", "Survives", "Refuses")


def section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Security model", 1)[1].split("\n## ", 1)[0]


def test_every_test_the_security_model_names_exists():
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", section())
    assert len(named) >= 15
    for file, name in named:
        tree = ast.parse((ROOT / "tests" / "security" / file).read_text())
        functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert name in functions, f"README names {file}::{name}, which does not exist"


def test_each_claim_names_a_test():
    claims = re.split(r"\n- \*\*", section())[1:]
    assert [claim.split("**")[0].split()[0] for claim in claims] == list(VERBS)
    assert all("::test_" in claim for claim in claims)
