"""The size analysis' screen: the same pass (`OpShapes`) in exact polynomial arithmetic, without sympy (issue #23).

`PolyArith` answers the calls `SympyArith` answers, on `Poly` values. `Sizes.screened()` runs the pass with it
and, where the pass finishes without raising and records no constraint, answers `constraints` (none) without ever
importing sympy (a fifth of a second, 30 MB): `diagnose --static` on a healthy Llama.

The screen may know more than the sympy pass, never less. Where the pass' choices depend on how sympy holds a
value, the screen gives up: an atom sympy may evaluate (`Mod(2*T, 2)` is 0 to it) wherever the pass asks whether a
value is a number, an integer, a symbol or equal to another; integer Div, whose branch depends on it; and a number
reached from sizes (a cancelled `(T+1)**2 - T**2 - 2*T`, a Min over several sizes) where the pass would drop what
it knows for a number (`plainly_number`). Three reviews built graphs that hid a baked Reshape through each of these
(tests/analysis/test_screen.py keeps them as traps).

Not done: a floor inside a floor is not merged as `arith.floor_div` merges it (floor(floor(T/5)/2) is floor(T/10)),
so a graph with two strided Convs in a row gives up on its first comparison and is left to sympy.
"""

from __future__ import annotations

import math
from fractions import Fraction

from graphfix.analysis.sizes.arith import MAX_SIZE
from graphfix.analysis.sizes.poly import ONE, Atom, Poly, Unscreened, lift, variable


def _split(p: Poly) -> tuple[Poly, Poly]:
    """p as (the terms that are whole numbers at every size, the rest), the constant's whole part with the first."""
    whole, rest = {}, {}
    for m, c in p.terms.items():
        if isinstance(c, int) and all(_integral(v) for v, _ in m):
            whole[m] = c
        elif m == ONE:
            whole[m], rest[m] = math.floor(c), c - math.floor(c)
        else:
            rest[m] = c
    return Poly(whole, flat=p.flat), Poly(rest, flat=p.flat)


def _integral(variable) -> bool:
    """A whole number at every size: a symbol, a floor or ceiling, or a Min, Max or Mod of whole numbers."""
    if isinstance(variable, str) or variable.func in ("floor", "ceiling"):
        return True
    return all(all(isinstance(c, int) for c in a.terms.values()) and all(_integral(v) for v in a.variables())
               for a in variable.args)


class PolyArith:
    """The screen's arithmetic: the same operations as `SympyArith`, on `Poly` values. Nothing is tolerated: any
    error in an op's handler ends the screen (the full analysis may skip that node; the screen cannot know)."""

    tolerated: tuple = ()

    integer = staticmethod(lift)
    expr = staticmethod(lift)

    @staticmethod
    def symbol(name: str) -> Poly:
        return variable(name)

    @staticmethod
    def floor(value) -> Poly:
        value = lift(value)
        whole, rest = _split(value)
        if rest.constant is not None:  # 0 <= rest < 1
            return Poly(whole.terms, value, flat=value.flat)  # sympy's floor(T + 1/2) is T
        return whole + variable(Atom("floor", (rest,)))

    @staticmethod
    def ceiling(value) -> Poly:
        value = lift(value)
        whole, rest = _split(value)
        if rest.constant is not None:
            return Poly((whole + (1 if rest.constant else 0)).terms, value, flat=value.flat)
        return whole + variable(Atom("ceiling", (rest,)))

    @classmethod
    def floor_div(cls, a, n) -> Poly:
        return cls.floor(lift(a) / n)

    @classmethod
    def floordiv(cls, a, b) -> Poly:
        """The pass' integer Div: truncated for numbers, floored or divided for sizes, as `SympyArith.floordiv`;
        which branch is taken is asked with `is_number`, so a value sympy may make a number gives up here."""
        a, b = lift(a), lift(b)
        if a.is_number and b.is_number:  # a number sympy may hold as an expression stays one (`Poly.derived`)
            quotient = Fraction(a.constant) / b.constant
            return Poly(lift(quotient if not (a.is_Integer and b.is_Integer) else int(quotient)).terms, a, b)
        return cls.floor_div(a, b) if b.is_Integer and b.constant > 0 else a / b

    @staticmethod
    def truediv(a, b) -> Poly:
        return lift(a) / lift(b)

    @staticmethod
    def min(a, b) -> Poly:
        return _extreme("Min", lift(a), lift(b))

    @staticmethod
    def max(a, b) -> Poly:
        return _extreme("Max", lift(a), lift(b))

    @staticmethod
    def mod(a, b) -> Poly:
        a, b = lift(a), lift(b)
        if b == 0:
            raise ZeroDivisionError("Mod by zero")  # sympy's too: the pass skips the node, the screen gives up
        if a.constant is not None and b.constant is not None:
            return Poly(lift(Fraction(a.constant) % b.constant).terms, a, b)
        return variable(Atom("Mod", (a, b)))

    @staticmethod
    def mul(*values) -> Poly:
        return math.prod((lift(v) for v in values), start=lift(1))

    @staticmethod
    def add(*values) -> Poly:
        return sum((lift(v) for v in values), start=lift(0))

    @staticmethod
    def sub(a, b) -> Poly:
        return lift(a) - lift(b)

    cancel = staticmethod(lift)  # a Poly is in lowest terms

    @staticmethod
    def numerator_denominator(value) -> tuple[Poly, Poly]:
        """sympy's `fraction(together(value))` for a polynomial: over the coefficients' common denominator."""
        value = lift(value)
        den = math.lcm(*(Fraction(c).denominator for c in value.terms.values())) if value.terms else 1
        return value * den, lift(den)

    @staticmethod
    def same(a, b) -> bool:
        return lift(a) == lift(b)

    @staticmethod
    def too_big(value) -> bool:
        """Never: the screen gives up (Unscreened) where the pass would keep a size unknown as too big (a number
        past int64, a coefficient past its bits; `arith.too_big`), and the pass decides."""
        value = lift(value)  # an int's numerator is itself, its denominator 1
        if any(not -MAX_SIZE <= c.numerator < MAX_SIZE or c.denominator >= MAX_SIZE for c in value.terms.values()):
            raise Unscreened(f"a size past int64 ({value})")
        return False

    @staticmethod
    def plainly_number(value) -> bool:
        """Whether the pass may treat `value` as a number where doing so drops what it knows (a broadcast dim
        beside an unknown one becomes unknown, a dim of 1 is squeezed): a number reached from sizes may be an
        expression to sympy, which would keep it (a review: (T+1)**2 - T**2 - 2*T + 1 is 2 to the screen, and a
        Reshape beyond it went unchecked), so the screen gives up there."""
        value = lift(value)
        if value.derived:
            raise Unscreened(f"whether {value}, computed from sizes, is a number to sympy")
        return value.is_number

    @staticmethod
    def equal(a, b) -> int:
        """1 where equal, 0 where they differ at every size (each symbol is at least 1); else Unscreened."""
        difference = lift(a) - lift(b)
        if difference.constant is not None:
            return int(difference.constant == 0)
        signs = {c > 0 for c in difference.terms.values()}
        if len(signs) == 1 and all(isinstance(v, str) for v in difference.variables()):
            return 0  # every term has one sign, and so has every value of the sum
        raise Unscreened(f"whether {a} equals {b} depends on the sizes")

    @staticmethod
    def simplify(value, bounds: dict) -> Poly:
        """Min(s, N) is s where s <= N is known (the table a symbol cuts); other atoms stay."""
        value = lift(value)
        chosen = {}
        for atom in value.variables():
            if isinstance(atom, Atom) and atom.func == "Min":
                for a in atom.args:
                    if all(_le(a, b, bounds) for b in atom.args if b is not a):
                        chosen[atom] = a
                        break
        if not chosen:
            return value
        out = lift(0)
        for monomial, c in value.terms.items():
            factors = [chosen[v] if v in chosen else variable(v) for v, p in monomial for _ in range(p)]
            out = out + math.prod(factors, start=lift(c))
        # sympy replaces the Min inside the value as it holds it (`Min(T, 512)*(T + 1)` is `T*(T + 1)`, unexpanded):
        # flat only where the value was (red team 151: rebuilt flat, a cancelled 2 hid a baked Reshape)
        return Poly(out.terms, flat=value.flat and out.flat)


def _extreme(func: str, a: Poly, b: Poly) -> Poly:
    """Min or Max of two sizes: the one that is, at every size; else an atom."""
    ordered = (b, a) if _at_least(a, b) else (a, b) if _at_least(b, a) else None
    if ordered is None:
        return variable(Atom(func, frozenset({a, b})))
    chosen = ordered[0] if func == "Min" else ordered[1]
    # sympy decides a Min over one size as well (Min(1, T) is 1, Min(1, T*T) is 1); over several, not always
    # (Min(2, B + T) stays), nor over a size it holds unexpanded (`Min(T*(T + 1) - T**2 + 1, 2)`, red team 151):
    # a number chosen there is marked as reached from sizes
    return Poly(chosen.terms, a, b, flat=a.flat and b.flat and len((a - b).free_symbols) <= 1)


def _at_least(a: Poly, b: Poly) -> bool:
    """a >= b at every size: their difference is a number >= 0, or a sum of the symbols' monomials with
    coefficients >= 0 whose least value (every symbol 1) is >= 0."""
    difference = a - b
    if not all(isinstance(v, str) for v in difference.variables()):
        return False
    terms = [c for m, c in difference.terms.items() if m != ONE]
    return all(c >= 0 for c in terms) and difference.terms.get(ONE, 0) + sum(terms) >= 0


def _le(a: Poly, b: Poly, bounds: dict) -> bool:
    """a <= b provably, from the upper bounds of single symbols."""
    if a == b:
        return True
    if a.constant is not None and b.constant is not None:
        return a.constant <= b.constant
    return a.is_Symbol and b.constant is not None and a in bounds and bounds[a][0] <= b.constant


POLY = PolyArith()
