"""Size arithmetic as sympy expressions: exact floor division, equality the sizes decide, and the output length of a
strided window (Conv, Pool). Values from the model are converted strictly: text is never run as Python.

The size pass (`Sizes`) does its arithmetic through an arithmetic object: `SYMPY` here, or the screen's
`graphfix.analysis.sizes.screen.POLY`, which answers the same calls with exact polynomials and no sympy.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import onnx_graphsurgeon as gs

from graphfix.core.lazy import sympy  # imported on first use: see graphfix.core.lazy
from graphfix.core.windows import window_of

if TYPE_CHECKING:
    from sympy import Expr

Shape = tuple  # tuple[Expr | None, ...]
# what an op's handler may raise on an op variant the pass does not model (its outputs keep onnx's shapes)
TOLERATED = (TypeError, ValueError, ArithmeticError, IndexError, KeyError, AttributeError, RecursionError)


def at_floors(expr: sympy.Expr | None, least: dict[sympy.Symbol, int]) -> sympy.Expr | None:
    """`expr` where each symbol is at least its `least`: `Min(14, T) - 2` is 12 from T = 14 on."""
    if expr is None or not least or not expr.free_symbols & least.keys():
        return expr
    return expr.subs({low: number for low in expr.atoms(sympy.Min) if len(low.args) == 2
                      for number, symbol in [sorted(low.args, key=lambda a: not a.is_Integer)]
                      if number.is_Integer and symbol in least and number <= least[symbol]})


def window_output(node: gs.Node, x: Shape | None, w: Shape | None, num=None) -> Shape | None:
    """The output shape of a Conv, ConvTranspose or Pool `node` over input shape `x` (weight shape `w`; `()` for a
    pool), with exact floor arithmetic (`num`'s, sympy's by default); None where it is not computed (unknown input,
    `auto_pad` SAME, `ceil_mode`, a ConvTranspose's `output_shape`)."""
    num = num or SYMPY
    transposed = node.op == "ConvTranspose"
    if x is None or w is None or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") \
            or node.attrs.get("ceil_mode", 0) or (transposed and node.attrs.get("output_shape")):
        return None
    spatial = len(x) - 2
    window = window_of(node.attrs, spatial, w if node.op in ("Conv", "ConvTranspose") else None)
    if window is None or None in window.kernel:
        return None
    channels = x[1] if node.op not in ("Conv", "ConvTranspose") else w[0] if not transposed else \
        None if w[1] is None else w[1] * node.attrs.get("group", 1)
    out = [x[0], channels]
    for j in range(spatial):
        if x[2 + j] is None:
            out.append(None)
            continue
        begin, end = window.pads_at(j)
        reach = window.dilations[j] * (num.expr(window.kernel[j]) - 1) + 1
        if transposed:  # each input step moves the output by the stride; the kernel's reach past the last one
            out.append(window.strides[j] * (x[2 + j] - 1) + window.output_padding[j] + reach - begin - end)
            continue
        out.append(num.floor_div(x[2 + j] + begin + end - reach, window.strides[j]) + 1)
    return tuple(out)


MAX_SIZE = 2**63  # onnxruntime's sizes are int64: a number past it wraps there, and is nothing the analysis knows
MAX_DEGREE, MAX_BITS = 64, 256  # a size past them is none a model computes on purpose (see `too_big`)


def too_big(value) -> bool:
    """Whether a size is past what any is: a number past int64, a degree past MAX_DEGREE or a coefficient past
    MAX_BITS. The pass keeps such a value unknown: a model squaring a shape value again and again (helper 108)
    made `expand((T + 1)**2**18 - T)` and numbers of 2**27 digits, in one node each, past any time bound."""
    expr = as_expr(value)
    if expr.is_Rational:
        return not -MAX_SIZE <= expr.p < MAX_SIZE or expr.q >= MAX_SIZE
    return _degree(expr) > MAX_DEGREE or any(max(abs(n.p), n.q).bit_length() > MAX_BITS
                                             for n in expr.atoms(sympy.Rational))


def _degree(expr) -> float:
    """The degree of an expression in its symbols, read from its tree (never expanded): floor, Min and the like
    have their arguments' highest; a power by a size, no bound."""
    if expr.is_Symbol:
        return 1
    if expr.is_Number or not expr.args:
        return 0
    if expr.is_Mul:
        return sum(_degree(a) for a in expr.args)
    if expr.is_Pow:
        base, exponent = (_degree(a) for a in expr.args)
        return base * abs(expr.args[1]) if expr.args[1].is_Number else math.inf if base or exponent else 0
    return max(_degree(a) for a in expr.args)


def as_expr(value) -> Expr:
    """A number or expression as sympy's; text raises SympifyError (`strict`): an attribute or value from the
    model may be a string, and sympy would run it as Python (issue #20). The pass skips the node."""
    return sympy.sympify(value, strict=True)


def floor_div(a, n) -> Expr:
    """floor(a / n) for a positive integer n, with one floor inside `a` folded in: floor((floor(y) + k) / n) is
    floor((y + k) / n) for integer k, so a strided conv after a strided conv reads floor(T/10), not
    floor(floor(T/5)/2), and equals what the graph computes with one Div."""
    a = as_expr(a)
    inner = [t for t in sympy.Add.make_args(a) if isinstance(t, sympy.floor)]
    rest = a - sympy.Add(*inner)
    if len(inner) == 1 and rest.is_Integer:
        return sympy.floor((inner[0].args[0] + rest) / n)
    return sympy.floor(a / n)


def _equal(a, b) -> int | None:
    """1 where two sizes are equal, 0 where they differ at every size, None where the sizes decide. sympy's
    `simplify` (a tenth of a second each) only where the difference as built decides neither: `expand(x, -1)`
    compares each size with -1, which the assumptions on the symbols settle at once."""
    difference = as_expr(a) - as_expr(b)
    if difference == 0:
        return 1
    if difference.is_zero is False:
        return 0
    difference = sympy.simplify(difference)
    if difference == 0:
        return 1
    return 0 if difference.is_zero is False else None


def _floordiv(a, b):
    a, b = as_expr(a), as_expr(b)
    if a.is_number and b.is_number:
        return sympy.Integer(int(a / b)) if a.is_integer and b.is_integer else a / b
    return floor_div(a, b) if b.is_Integer and b > 0 else a / b


def _truediv(a, b):
    return as_expr(a) / as_expr(b)


class SympyArith:
    """The full analysis' arithmetic, on sympy expressions. An op handler that raises one of `tolerated` leaves
    its outputs with onnx's shapes (an op variant the pass does not model)."""

    @property
    def tolerated(self) -> tuple:
        return (*TOLERATED, sympy.SympifyError)

    expr = staticmethod(as_expr)
    floor_div = staticmethod(floor_div)
    floordiv = staticmethod(_floordiv)
    truediv = staticmethod(_truediv)
    equal = staticmethod(_equal)

    @staticmethod
    def integer(n) -> Expr:
        return sympy.Integer(n)

    @staticmethod
    def symbol(name: str) -> Expr:
        return sympy.Symbol(name, integer=True, positive=True)

    @staticmethod
    def floor(value) -> Expr:
        return sympy.floor(value)

    @staticmethod
    def ceiling(value) -> Expr:
        return sympy.ceiling(value)

    @staticmethod
    def min(a, b) -> Expr:
        return sympy.Min(a, b)

    @staticmethod
    def max(a, b) -> Expr:
        return sympy.Max(a, b)

    @staticmethod
    def mod(a, b) -> Expr:
        return sympy.Mod(a, b)

    @staticmethod
    def mul(*values) -> Expr:
        return sympy.Mul(*values)

    @staticmethod
    def add(*values) -> Expr:
        return sympy.Add(*values)

    @staticmethod
    def sub(a, b) -> Expr:
        return as_expr(a) - as_expr(b)

    @staticmethod
    def cancel(value) -> Expr:
        return sympy.cancel(value)

    @staticmethod
    def numerator_denominator(value) -> tuple[Expr, Expr]:
        return sympy.fraction(sympy.together(value))

    @staticmethod
    def same(a, b) -> bool:
        """Equal as expressions: structurally, or once expanded (cheap; sympy.simplify costs milliseconds)."""
        return a == b or sympy.expand(a - b) == 0

    too_big = staticmethod(too_big)

    @staticmethod
    def plainly_number(value) -> bool:
        return as_expr(value).is_number

    @staticmethod
    def simplify(expr, bounds: dict) -> Expr:
        """Apply the range facts: Min(N, s) is s where s <= N is known."""
        if not isinstance(expr, sympy.Basic) or not expr.has(sympy.Min):
            return expr
        subs = {}
        for m in expr.atoms(sympy.Min):
            args = m.args
            for a in args:
                if all(_le(a, b, bounds) for b in args if b is not a):
                    subs[m] = a
                    break
        return expr.xreplace(subs) if subs else expr


def _le(a: Expr, b: Expr, bounds: dict) -> bool:
    """a <= b provably, using the upper bounds of single symbols."""
    if a == b:
        return True
    if a.is_number and b.is_number:
        return bool(a <= b)
    if a.is_Symbol and b.is_number and a in bounds:
        return bounds[a][0] <= b
    return False


SYMPY = SympyArith()
same = SYMPY.same  # equal as expressions: structurally, or once expanded (the rules' comparison of sizes)
