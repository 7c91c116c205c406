"""One parser per kind of value a user gives (command line, configuration, environment): a value that is no such
thing is a UsageError naming where it came from (exit 2, one line), never a ValueError or an OverflowError deep
inside a run.

- `seconds`: a finite number of seconds, > 0, at most a year (`--timeout`, GRAPHFIX_MAX_RUN_SECONDS, ...).
- `byte_size`: '2G', '512M', '1000000' -> bytes, at most 2**62 (`--max-probe-memory`, GRAPHFIX_MAX_PROBE_MEMORY).
- `count`: a whole number within bounds (GRAPHFIX_MAX_NODES, `--threads`, `--jobs`).
- `tolerance`: a finite number >= 0 (`--rtol`, `--atol`, rtol/atol in pyproject.toml).
- `dim`: one dim of a shape: ASCII digits (a size below 2**63), `?` or a name (`--shape`, `shapes = {...}`).
- `from_env`: an environment variable read with one of them; unset or empty is the default.

Only ASCII digits are numbers here: `str.isdigit()` also accepts '²', which `int()` then refuses. And at most
MAX_DIGITS of them: `int()` of more than 4300 digits is a ValueError (CPython's guard against quadratic time).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import TypeVar

from graphfix.core.errors import UsageError

T = TypeVar("T")
MAX_SECONDS = 365 * 24 * 3600.0
MAX_BYTES = 1 << 62
MAX_DIM = (1 << 63) - 1
MAX_DIGITS = 20  # more than any bound here needs (2**63 has 19 digits); a longer number is out of bounds unread
NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?|\.[0-9]+([eE][+-]?[0-9]+)?")
DIGITS = re.compile(r"[0-9]+")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SIZE = re.compile(r"(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>[KMGT]?)(B)?", re.IGNORECASE)
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def number(text: object, where: str) -> float:
    """A finite decimal number (ASCII: '1.5', '2e3'); an int or float from a TOML file is taken as it is."""
    if isinstance(text, bool):
        raise UsageError(f"{where}: expected a number, got {text!r}")
    if isinstance(text, int | float):
        value = float(text) if abs(text) <= 1e308 else math.inf
    else:
        body = str(text).strip()
        sign = -1.0 if body.startswith("-") else 1.0
        if not NUMBER.fullmatch(body.lstrip("+-")):
            raise UsageError(f"{where}: expected a number, got {str(text)!r}")
        value = sign * float(body.lstrip("+-"))
    if not math.isfinite(value):
        raise UsageError(f"{where}: expected a finite number, got {text!r}")
    return value


def seconds(text: object, where: str) -> float:
    value = number(text, where)
    if not 0 < value <= MAX_SECONDS:
        raise UsageError(f"{where}: expected seconds > 0 and at most {MAX_SECONDS:g}, got {text!r}")
    return value


def tolerance(text: object, where: str) -> float:
    value = number(text, where)
    if value < 0:
        raise UsageError(f"{where}: expected a number >= 0, got {text!r}")
    return value


def byte_size(text: object, where: str) -> int:
    """'2G' / '512M' / '1.5k' / '1000000' -> bytes."""
    found = SIZE.fullmatch(str(text).strip())
    if found is None:
        raise UsageError(f"{where}: '{text}' is no size (e.g. 2G, 512M, 1000000)")
    value = float(found["number"]) * UNITS[found["unit"].upper()]
    if not 0 < value <= MAX_BYTES:
        raise UsageError(f"{where}: expected a size > 0 and at most {MAX_BYTES} bytes, got '{text}'")
    return int(value)


def whole(text: str) -> int | None:
    """The whole number `text` spells in at most MAX_DIGITS ASCII digits, else None."""
    return int(text) if len(text) <= MAX_DIGITS and DIGITS.fullmatch(text) else None


def count(text: object, where: str, low: int = 1, high: int = MAX_DIM) -> int:
    value = None if isinstance(text, bool) else whole(str(text).strip())
    if value is None or not low <= value <= high:
        raise UsageError(f"{where}: expected a whole number from {low} to {high}, got {str(text)!r}")
    return value


def dim(text: str, where: str) -> int | str | None:
    """'16000' -> 16000; '?' -> None; 'batch' -> 'batch'."""
    part = text.strip()
    size = whole(part)
    if size is not None and size <= MAX_DIM:
        return size
    if part == "?":
        return None
    if NAME.fullmatch(part):
        return part
    raise UsageError(f"{where}: bad dim '{part}' (a size in digits, a name or ?)")


def from_env(name: str, parse: Callable[[str, str], T], default: T) -> T:
    """`parse(os.environ[name])`, or `default` when the variable is unset or empty."""
    given = os.environ.get(name, "").strip()
    return parse(given, name) if given else default
