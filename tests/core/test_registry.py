"""Built-in rules are found by scanning graphfix.rules; plugins by entry points; clashes fail loudly."""

from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from graphfix.core.errors import InternalError, UsageError
from graphfix.core.registry import BrokenRule, _load, load_rules, rules_defined_in, rules_package, select_rules

REPO = Path(__file__).resolve().parents[2]


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group="graphfix.rules")


def test_builtin_rules_are_found_by_scanning_the_package():
    rules, broken = load_rules()
    assert broken == []
    codes = [r.code for r in rules]
    assert codes == sorted(codes) and codes[:6] == ["GF000", "GF001", "GF002", "GF003", "GF004", "GF005"]
    assert len({r.name for r in rules}) == len(rules)


@pytest.mark.parametrize("module", [m.name for m in pkgutil.iter_modules(rules_package().__path__)])
def test_every_file_in_rules_defines_exactly_one_registered_rule(module):
    defined = rules_defined_in(importlib.import_module(f"graphfix.rules.{module}"))
    assert len(defined) == 1, f"rules/{module}.py must define one Rule subclass, found {defined}"
    assert defined[0] in load_rules()[0]
    assert module.startswith(defined[0].code.lower() + "_"), "the file is named gf0NN_<name>.py after its rule"


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A third-party module `xyz_plugin` with two rules, Thing (XYZ001) and Other (XYZ002)."""
    (tmp_path / "xyz_plugin.py").write_text(
        "from graphfix.core.rule import Rule\n"
        "class Thing(Rule):\n    code, name = 'XYZ001', 'thing'\n"
        "class Other(Rule):\n    code, name = 'XYZ002', 'other'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "xyz_plugin"


def test_plugin_rules_load_through_entry_points(plugin):
    rules, broken = _load([ep("XYZ001", f"{plugin}:Thing"), ep("XYZ002", f"{plugin}:Other")])
    assert [r.code for r in rules] == ["XYZ001", "XYZ002"] and broken == []


@pytest.mark.parametrize(
    ("eps", "taken", "says"),
    [
        ([("XYZ001", "xyz_plugin:Thing"), ("XYZ001", "xyz_plugin:Other")], {}, "XYZ001 is claimed twice"),
        ([("GF001", "my_plugin.rules:Thing")], {"GF001": "graphfix.rules.gf001_truncated_graph"},
         "GF001 is claimed twice"),
        ([("GF900", "my_plugin.rules:Thing")], {}, "reserved for built-in rules"),
        ([("GF002", "graphfix.rules.gf001_truncated_graph:TruncatedGraph")], {}, "declares code GF001"),
        ([("not a code", "xyz_plugin:Thing")], {}, "is not a code like GF001"),
    ],
)
def test_a_plugin_that_breaks_the_rules_is_refused_loudly_without_taking_the_others_down(plugin, eps, taken, says):
    _rules, broken = _load([ep(name, value) for name, value in eps], taken=taken)
    assert broken and says in broken[-1].error and broken[-1].plugin
    assert isinstance(broken[-1].as_error(), UsageError)


def test_plugin_that_fails_to_import_is_listed_and_skipped_with_a_warning(monkeypatch):
    rules, broken = _load([ep("XYZ001", "no_such_module_anywhere:Rule")])
    assert rules == [] and broken[0].code == "XYZ001" and "ModuleNotFoundError" in broken[0].error
    assert broken[0].warning.startswith("graphfix: warning: plugin rule XYZ001 is not loaded")


def test_selecting_a_broken_rule_is_an_internal_error(monkeypatch):
    import graphfix.core.registry as registry

    real = registry.load_rules()
    monkeypatch.setattr(registry, "load_rules", lambda: (real[0], [BrokenRule("XYZ001", "ImportError: boom")]))
    with pytest.raises(InternalError, match="XYZ001 failed to load"):
        select_rules()
    assert [r.code for r in select_rules(skip=("XYZ001",))] == [r.code for r in real[0]]


def _checkout_copy(tmp_path: Path) -> Path:
    tree = tmp_path / "checkout"
    for part in ("graphfix", "rules", "samples"):
        shutil.copytree(REPO / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def _run_from(tree: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, "-m", "graphfix", *args], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_checkout_imports_like_the_installed_package(tmp_path):
    """Run from the source tree's root (./graphfix shadows any install): the built-in rules still load."""
    tree = _checkout_copy(tmp_path)
    done = _run_from(tree, "diagnose", "--static", "samples/hubert_padding_mask/model.onnx")
    assert "failed to load" not in done.stdout + done.stderr
    assert "GF003" in done.stdout and done.returncode == 1


def test_adding_a_rule_file_is_all_it_takes(tmp_path):
    tree = _checkout_copy(tmp_path)
    (tree / "rules" / "gf099_example_rule.py").write_text('''"""GF099 example-rule."""

from graphfix.core.rule import Rule, Severity


class ExampleRule(Rule):
    """Flags nothing; proves that a new file in rules/ is a new rule.

    ## What it does
    Nothing.

    ## Why it breaks deployment
    It does not.

    ## Example
    None.

    ## Fix safety
    No fix.
    """

    code = "GF099"
    name = "example-rule"
    severity = Severity.INFO

    def detect(self, ctx):
        return ()
''')
    listed = _run_from(tree, "rules")
    assert listed.returncode == 0 and "GF099  example-rule" in listed.stdout
    explained = _run_from(tree, "explain", "GF099")
    assert explained.returncode == 0 and "proves that a new file in rules/ is a new rule" in explained.stdout
