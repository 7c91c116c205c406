"""The README's rule reference is generated from the rules' docstrings and must stay in sync with them."""

from pathlib import Path

import pytest

from graphfix.core.registry import load_rules
from graphfix.core.rule import DOC_SECTIONS
from graphfix.report.docs import END, START, rules_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_rule_section_is_current():
    text = README.read_text()
    assert START in text and END in text
    assert rules_markdown() in text, "README rule reference is stale: run `python -m graphfix.report.docs --write`"


@pytest.mark.parametrize("rule", load_rules()[0], ids=lambda r: r.code)
def test_rule_documents_every_section(rule):
    docs = rule.docs()
    assert rule.summary() and not rule.summary().startswith("##")
    for section in DOC_SECTIONS:
        assert f"## {section}" in docs, f"{rule.code} lacks '## {section}'"
    assert rule.name == rule.name.lower() and " " not in rule.name


def test_explain_prints_the_rules_own_docs():
    from click.testing import CliRunner

    from graphfix.cli import cli

    rule = load_rules()[0][0]
    result = CliRunner().invoke(cli, ["explain", rule.name])
    assert result.exit_code == 0
    assert rule.docs() in result.output
