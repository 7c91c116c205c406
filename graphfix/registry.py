"""Rule discovery through the `graphfix.rules` entry-point group, built-ins and plugins alike.

The entry-point name is the rule code. Two rules claiming one code, a plugin claiming the reserved `GF` prefix,
or a class whose `code` differs from its entry-point name stop graphfix with a clear error (flake8 #1090 let
such clashes pass silently). A rule that fails to import is kept as a `BrokenRule`, reported as an internal
finding, while the others still run.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points

from graphfix.errors import RuleRegistryError, UsageError
from graphfix.rule import Finding, Rule, Severity

GROUP = "graphfix.rules"
CODE_PATTERN = re.compile(r"^[A-Z]{2,4}\d{3}$")
BUILTIN_PREFIX = "GF"
BUILTIN_MODULE = "graphfix.rules."


@dataclass
class BrokenRule:
    """A registered rule that could not be imported; it reports itself instead of detecting."""

    code: str
    error: str

    def as_finding(self) -> Finding:
        return Finding(self.code, "internal-error", Severity.ERROR, f"rule {self.code} failed to load: {self.error}")


@cache
def load_rules() -> tuple[list[type[Rule]], list[BrokenRule]]:
    """All registered rules sorted by code, and those that failed to import."""
    return _load(entry_points(group=GROUP))


def _load(eps) -> tuple[list[type[Rule]], list[BrokenRule]]:
    rules: dict[str, type[Rule]] = {}
    broken: list[BrokenRule] = []
    origins: dict[str, str] = {}
    for ep in eps:
        _check_claim(ep, origins)
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not take the others down
            broken.append(BrokenRule(ep.name, f"{type(exc).__name__}: {exc}"))
            continue
        if not (isinstance(cls, type) and issubclass(cls, Rule)):
            broken.append(BrokenRule(ep.name, f"{ep.value} is not a graphfix.rule.Rule subclass"))
            continue
        if cls.code != ep.name:
            raise RuleRegistryError(f"entry point {ep.name} = {ep.value} declares code {cls.code}")
        rules[cls.code] = cls
    return sorted(rules.values(), key=lambda r: r.code), broken


def _check_claim(ep: EntryPoint, origins: dict[str, str]) -> None:
    if not CODE_PATTERN.match(ep.name):
        raise RuleRegistryError(f"rule entry point '{ep.name}' ({ep.value}) is not a code like GF001 or ABC123")
    if ep.name in origins:
        raise RuleRegistryError(f"rule code {ep.name} is claimed twice: by {origins[ep.name]} and by {ep.value}")
    if ep.name.startswith(BUILTIN_PREFIX) and not ep.value.startswith(BUILTIN_MODULE):
        raise RuleRegistryError(f"rule code {ep.name} ({ep.value}): the GF prefix is reserved for built-in rules")
    origins[ep.name] = ep.value


def find_rule(code_or_name: str) -> type[Rule] | None:
    rules, _ = load_rules()
    key = code_or_name.strip()
    for rule in rules:
        if key.upper() == rule.code or key.lower() == rule.name or key in rule.aliases:
            return rule
    return None


def select_rules(only: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> list[type[Rule]]:
    """The rules named by --only (all when empty) minus --skip; unknown codes are a usage error."""
    rules, _ = load_rules()
    for key in (*only, *skip):
        if find_rule(key) is None:
            raise UsageError(f"unknown rule '{key}' (see `graphfix rules`)")
    wanted = {find_rule(k).code for k in only} if only else {r.code for r in rules}
    unwanted = {find_rule(k).code for k in skip}
    return [r for r in rules if r.code in wanted and r.code not in unwanted]


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()
