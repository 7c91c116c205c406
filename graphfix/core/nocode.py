"""`with no_code_from_text(): ...` — no Python is compiled from text in this thread while a library reads a model.

onnxruntime's symbolic shape inference hands values it reads from the model to sympy (`sympy.Min(end, dim)` with a
Slice's ends), and sympy parses a string it is given as Python and runs it: a STRING tensor used as Slice ends ran
its text (issue #20). graphfix's own code never evaluates model text (see `graphfix.validate.dim_expr`), but it
cannot change how a library treats what it reads. Inside the block an audit hook (PEP 578, installed once per
process) refuses every `compile` of source text in this thread, whoever asks: `eval` and `exec` of a string compile
it first. Importing a module from its file is not affected (its code has a file name); a library that builds code
from text on the way (namedtuple, dataclasses) fails there as well, which the caller treats like any failure.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CodeFromText(BaseException):  # a BaseException: a library's `except Exception` must not swallow it
    """Raised where something tried to compile text inside `no_code_from_text()`."""


_state = threading.local()


@contextmanager
def no_code_from_text() -> Iterator[None]:
    """Refuse, in this thread, any compilation of source text until the block is left (nestable)."""
    _install()
    depth = getattr(_state, "depth", 0)
    _state.depth = depth + 1
    try:
        yield
    finally:
        _state.depth = depth


@functools.cache
def _install() -> None:
    sys.addaudithook(_audit)  # cannot be removed; outside a block it returns at once


def _audit(event: str, args: tuple) -> None:
    if event != "compile" or not getattr(_state, "depth", 0):
        return
    filename = args[1]
    name = filename.decode(errors="replace") if isinstance(filename, bytes) else str(filename)
    if name.startswith("<") and not _a_traceback_being_formatted() and not _sympy_monomial_arithmetic():
        raise CodeFromText("the model's text reached a Python evaluator, which graphfix refused to run")


def _a_traceback_being_formatted() -> bool:
    """Whether the compile is `ast.parse` called by the traceback module: Python 3.11's caret anchors parse a line
    of a source file (never run it) when an exception is printed, as pytest's hook does for one that surfaced in a
    garbage collector's callback (an OutOfTime of graphfix.core.budget can). That is no model text."""
    parser, caller = sys._getframe(2), sys._getframe(3)  # _audit <- this <- ast.parse <- its caller
    return (parser.f_code.co_name == "parse" and parser.f_globals.get("__name__") == "ast"
            and caller.f_globals.get("__name__") == "traceback")


def _sympy_monomial_arithmetic() -> bool:
    """Whether the compile is sympy writing a polynomial ring's monomial arithmetic (`MonomialOps._build`: `exec`
    of functions it formats from its own templates and the ring's number of generators, an int; no value of the
    model reaches it). onnxruntime's symbolic inference simplifies a Slice's length (`cancel`) and builds such a
    ring for each new count of symbols: refused, it lost every inferred shape of a conv and a slice in a fresh
    process, where a process that had built the ring before kept them (helper 97)."""
    caller = sys._getframe(2)  # _audit <- this; exec is C, so the frame above _audit is the one that called it
    return caller.f_code.co_name == "_build" and caller.f_globals.get("__name__") == "sympy.polys.monomials"
