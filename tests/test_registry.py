"""Rules are discovered through entry points; clashes fail loudly, broken plugins degrade to a finding."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from graphfix.errors import RuleRegistryError
from graphfix.registry import _load, load_rules


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group="graphfix.rules")


def test_builtin_rules_are_registered_through_entry_points():
    rules, broken = load_rules()
    assert broken == []
    codes = [r.code for r in rules]
    assert codes == sorted(codes) and codes[:6] == ["GF000", "GF001", "GF002", "GF003", "GF004", "GF005"]
    assert len({r.name for r in rules}) == len(rules)


def test_duplicate_code_fails_loudly():
    with pytest.raises(RuleRegistryError, match="GF001 is claimed twice"):
        _load([ep("GF001", "graphfix.rules.gf001_truncated_graph:TruncatedGraph"),
               ep("GF001", "graphfix.rules.gf002_repeat_interleave:RepeatInterleave")])


def test_plugin_may_not_claim_the_gf_prefix():
    with pytest.raises(RuleRegistryError, match="reserved for built-in rules"):
        _load([ep("GF900", "my_plugin.rules:Thing")])


def test_code_must_match_the_class():
    with pytest.raises(RuleRegistryError, match="declares code GF001"):
        _load([ep("GF002", "graphfix.rules.gf001_truncated_graph:TruncatedGraph")])


def test_plugin_that_fails_to_import_is_reported_not_fatal():
    rules, broken = _load([ep("GF001", "graphfix.rules.gf001_truncated_graph:TruncatedGraph"),
                           ep("XYZ001", "no_such_module_anywhere:Rule")])
    assert [r.code for r in rules] == ["GF001"]
    assert broken[0].code == "XYZ001" and "ModuleNotFoundError" in broken[0].error
    finding = broken[0].as_finding()
    assert finding.rule == "XYZ001" and finding.name == "internal-error"
