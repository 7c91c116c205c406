"""Dim expressions ("2*N + 1", "floor(T/2)", "Min(512, S)") evaluated by graphfix itself, never by an evaluator.

A dim name is model text: `sympy.sympify` would run `__import__('os').system(...)` (issue #20). The text is parsed
into Python's syntax tree (`ast.parse` builds a tree and runs nothing) and walked here: integers, names, `+ - * /
// %`, unary minus and the functions onnxruntime's symbolic shape inference prints (floor, ceiling, Min, Max, Mod),
in exact rational arithmetic. Anything else (`**`, attributes, other calls, floats) leaves the dim undecided, as an
unknown name does. Text and nesting are bounded, so a hostile dim cannot exhaust memory or the stack.
"""

from __future__ import annotations

import ast
import math
import operator
from fractions import Fraction

MAX_CHARS = 1000  # onnxruntime's longest dims (floors nested a dozen deep) stay far below
MAX_DEPTH = 64  # syntax-tree depth

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_FUNCTIONS = {"floor": (1, lambda a: Fraction(math.floor(a[0]))), "ceiling": (1, lambda a: Fraction(math.ceil(a[0]))),
              "Mod": (2, lambda a: a[0] % a[1]), "Min": (None, min), "Max": (None, max)}


class _Undecided(Exception):
    """The text is outside the grammar, names an unbound dim, or divides by zero."""


def evaluate(text: str, sizes: dict[str, int]) -> Fraction | None:
    """The value of `text` with the names bound by `sizes`; None when it is not decided by them."""
    if len(text) > MAX_CHARS:
        return None
    try:
        tree = ast.parse(text, mode="eval")
        return _value(tree.body, sizes, 0)
    except (_Undecided, SyntaxError, ValueError, RecursionError, MemoryError, ZeroDivisionError):
        return None


def _value(node: ast.AST, sizes: dict[str, int], depth: int) -> Fraction:
    if depth > MAX_DEPTH:
        raise _Undecided
    depth += 1
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    if isinstance(node, ast.Name):
        if node.id not in sizes:
            raise _Undecided
        return Fraction(int(sizes[node.id]))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _value(node.operand, sizes, depth)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_value(node.left, sizes, depth), _value(node.right, sizes, depth))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS \
            and node.args and not node.keywords:
        arity, function = _FUNCTIONS[node.func.id]
        if arity is not None and len(node.args) != arity:
            raise _Undecided
        return function([_value(arg, sizes, depth) for arg in node.args])
    raise _Undecided
