"""Finding the rules: built-ins by scanning the `graphfix.rules` package, plugins through entry points.

A new file in `rules/` is a new rule: `builtin_rules()` imports every module of the package and takes the `Rule`
subclasses defined there, so nothing else is edited to register it. Third-party rules register in the
`graphfix.rules` entry-point group, under their code.

Two built-in rules claiming one code stop graphfix with a clear error. A third-party entry point that is
malformed (a name that is no code, a value that names no object), claims a code already taken or the reserved `GF`
prefix (flake8 #1090 let such clashes pass silently), declares another code in its class, or fails to import is
kept as a `BrokenRule` with the reason in one line: `graphfix rules` lists it, and a command that runs the rules
says so in one warning line on stderr and runs the others (Polygraphy's MissingTool: a broken plugin never takes
the whole CLI down); naming it with --only is a usage error. A built-in rule that fails to import stops the
commands that would run it with an internal error (exit 2), since a missing rule is graphfix's problem, not a
finding about the user's model.

The top-level `rules/` folder installs as `graphfix.rules` (setup.cfg's package_dir). Run from a checkout, where
`graphfix/rules` does not exist, the package is loaded from that folder under the same name, so the source tree
imports the way the installed package does.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import sys
import traceback
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType

from graphfix.core.errors import GraphfixError, InternalError, RuleRegistryError, UsageError, printable
from graphfix.core.rule import Rule

GROUP = "graphfix.rules"
CODE_PATTERN = re.compile(r"^[A-Z]{2,4}\d{3}$")
BUILTIN_PREFIX = "GF"
BUILTIN_PACKAGE = "graphfix.rules"


@dataclass
class BrokenRule:
    """A rule that could not be registered: a built-in one (running it is an internal error) or a third-party
    entry point (`plugin`: skipped with a warning)."""

    code: str
    error: str
    plugin: bool = False

    def as_error(self) -> GraphfixError:
        if self.plugin:
            return UsageError(f"plugin rule {self.code} is not loaded: {self.error}")
        return InternalError(f"rule {self.code} failed to load: {self.error}")

    @property
    def warning(self) -> str:
        return f"graphfix: warning: plugin rule {self.code} is not loaded, the other rules run: {self.error}"


@cache
def load_rules() -> tuple[list[type[Rule]], list[BrokenRule]]:
    """All rules sorted by code (built-ins, then plugins), and those that failed to import."""
    builtins, broken = builtin_rules()
    plugins, broken_plugins = _load(entry_points(group=GROUP), taken={r.code: r.__module__ for r in builtins})
    return sorted([*builtins, *plugins], key=lambda r: r.code), [*broken, *broken_plugins]


def builtin_rules() -> tuple[list[type[Rule]], list[BrokenRule]]:
    """The `Rule` subclasses defined in the modules of `graphfix.rules`, one per module."""
    package = rules_package()
    rules: dict[str, type[Rule]] = {}
    broken: list[BrokenRule] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        name = f"{BUILTIN_PACKAGE}.{info.name}"
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # reported per rule; the others still load
            broken.append(BrokenRule(info.name.split("_")[0].upper(), f"{type(exc).__name__}: {exc}"))
            continue
        for cls in rules_defined_in(module):
            if cls.code in rules:
                raise RuleRegistryError(f"rule code {cls.code} is claimed twice: by {rules[cls.code].__module__} "
                                        f"and by {name}")
            rules[cls.code] = cls
    return list(rules.values()), broken


def rules_defined_in(module: ModuleType) -> list[type[Rule]]:
    """The concrete `Rule` subclasses a module defines itself (not those it imports)."""
    return [obj for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, Rule) and obj is not Rule
            and obj.__module__ == module.__name__ and "code" in vars(obj)]


def rules_package() -> ModuleType:
    """`graphfix.rules`: the installed package, or in a checkout the top-level `rules/` folder beside graphfix/."""
    if BUILTIN_PACKAGE in sys.modules:
        return sys.modules[BUILTIN_PACKAGE]
    here = Path(__file__).resolve().parents[1]  # graphfix/ (this is graphfix/core/registry.py)
    source = here.parent / "rules" / "__init__.py"
    if (here / "rules").is_dir() or not source.is_file():
        return importlib.import_module(BUILTIN_PACKAGE)  # installed (wheel), or mapped by an editable install
    spec = importlib.util.spec_from_file_location(BUILTIN_PACKAGE, source,
                                                  submodule_search_locations=[str(source.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[BUILTIN_PACKAGE] = module
    spec.loader.exec_module(module)
    return module


def _load(eps, taken: dict[str, str] | None = None) -> tuple[list[type[Rule]], list[BrokenRule]]:
    """Plugin rules from entry points; `taken` maps the codes already registered to their modules."""
    rules: dict[str, type[Rule]] = {}
    broken: list[BrokenRule] = []
    taken = taken or {}
    origins: dict[str, str] = dict(taken)
    for ep in eps:
        try:
            if ep.name in taken and ep.value.partition(":")[0] == taken[ep.name]:
                continue  # an older install's entry point for a built-in the package scan found already
            _check_claim(ep, origins)
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Rule)):
                raise RuleRegistryError(f"{ep.value} is not a graphfix Rule subclass")
            if cls.code != ep.name:
                raise RuleRegistryError(f"entry point {ep.name} = {ep.value} declares code {cls.code}")
        except Exception as exc:  # a broken plugin must not take the others down
            why = str(exc) if isinstance(exc, RuleRegistryError) else f"{type(exc).__name__}: {exc}"
            broken.append(BrokenRule(ep.name, " ".join(why.split()), plugin=True))
            continue
        rules[cls.code] = cls
    return sorted(rules.values(), key=lambda r: r.code), broken


def _check_claim(ep: EntryPoint, origins: dict[str, str]) -> None:
    if not CODE_PATTERN.match(ep.name):
        raise RuleRegistryError(f"rule entry point '{ep.name}' ({ep.value}) is not a code like GF001 or ABC123")
    if ep.name in origins:
        raise RuleRegistryError(f"rule code {ep.name} is claimed twice: by {origins[ep.name]} and by {ep.value}")
    if ep.name.startswith(BUILTIN_PREFIX) and not ep.value.startswith(BUILTIN_PACKAGE + "."):
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
    """The rules named by --only (all when empty) minus --skip; unknown codes are a usage error.

    A selected rule that failed to load stops the command: an internal error (exit 2), not a finding.
    """
    rules, broken = load_rules()
    broken_codes = {b.code.upper(): b for b in broken}
    for key in (*only, *skip):
        if find_rule(key) is None and key.upper() not in broken_codes:
            raise UsageError(f"unknown rule '{key}' (see `graphfix rules`)")
    wanted = {_code(k) for k in only} if only else {r.code for r in rules} | set(broken_codes)
    unwanted = {_code(k) for k in skip}
    for code in sorted(wanted - unwanted):
        if code in broken_codes and (only or not broken_codes[code].plugin):
            raise broken_codes[code].as_error()
        if code in broken_codes:
            _warn(broken_codes[code].warning)
    return [r for r in rules if r.code in wanted and r.code not in unwanted]


@cache
def _warn(line: str) -> None:
    """One line on stderr, once per process."""
    print(printable(line), file=sys.stderr)


def _code(key: str) -> str:
    rule = find_rule(key)
    return rule.code if rule is not None else key.upper()


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()
