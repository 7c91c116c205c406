"""Exact size arithmetic without sympy, for the size analysis' screen (issue #23).

Most graphs' sizes are polynomials in the input dims with integer coefficients: `B * T * 64`, `T + 1`, `2 * H`.
`Poly` holds one exactly (a dict from monomial to coefficient) and compares two by their canonical form, so
`B * T * 64 == 64 * T * B` is decided at once, as sympy's `expand(a - b) == 0` would decide it. floor, ceiling, Min,
Max and Mod of what is not a number become `Atom` variables, compared structurally (floor(T/2) is floor(T/2)).

Where the arithmetic cannot decide (a comparison of sizes, a division by a sum, an equality that depends on the
size, a polynomial past MAX_TERMS or MAX_DEGREE), it raises `Unscreened`: the screen then gives up and the full
sympy analysis decides. The screen never answers anything it was not exact about; it only lets `diagnose --static`
skip importing sympy (a fifth of a second, 30 MB) on a graph whose sizes hold at every size.

The screen may know more than the sympy pass, never less. Where the pass' choices depend on how sympy holds a
value, the screen gives up: an atom sympy may evaluate (`Mod(2*T, 2)` is 0 to it) wherever the pass asks whether a
value is a number, an integer, a symbol or equal to another; integer Div, whose branch depends on it; and a number
reached from sizes (a cancelled `(T+1)**2 - T**2 - 2*T`, a Min over several sizes) where the pass would drop what
it knows for a number (`plainly_number`). Three reviews built graphs that hid a baked Reshape through each of these
(tests/analysis/test_screen.py keeps them as traps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

ONE: frozenset = frozenset()  # the empty monomial: the constant term
MAX_TERMS, MAX_DEGREE = 64, 12  # a real graph's sizes are far smaller (B*H*T*D: 1 term, degree 4); a product
# past them (a model squaring a shape value again and again) gives up at once rather than expand it


class Unscreened(Exception):
    """The screen met what its arithmetic does not decide: the full analysis runs instead."""


@dataclass(frozen=True)
class Atom:
    """floor, ceiling, Min, Max or Mod of sizes that are not numbers: a variable of its own, equal only to itself."""

    func: str
    args: tuple | frozenset

    def __str__(self) -> str:
        args = sorted(map(str, self.args)) if isinstance(self.args, frozenset) else map(str, self.args)
        return f"{self.func}({', '.join(args)})"

    @property
    def free_symbols(self) -> set[str]:
        return set().union(*(a.free_symbols for a in self.args))


class Poly:
    """A polynomial with rational coefficients in the symbols (input dims, by name) and atoms."""

    __slots__ = ("derived", "terms")

    def __init__(self, terms: dict, *operands: Poly):
        self.terms = {m: c for m, c in terms.items() if c}
        # a number reached from sizes (a cancellation, a decided Min): sympy may still hold it as an expression
        self.derived = not self.variables() and any(o.derived or o.variables() for o in operands)

    # --- reading --------------------------------------------------------------------------------------------------
    @property
    def constant(self):
        """The value where this is a number, else None."""
        if not self.terms:
            return 0
        return self.terms[ONE] if len(self.terms) == 1 and ONE in self.terms else None

    @property
    def is_number(self) -> bool:
        """Whether this is a number. Where it holds an atom that is not one, sympy may still make it one
        (`Mod(2*T, 2)` is 0 to sympy): the pass would then know a value the screen does not, so the screen gives up
        (a review's graph read a Gather index through such a Mod and hid a baked Reshape)."""
        if self.constant is not None:
            return True
        if any(isinstance(v, Atom) for v in self.variables()):
            raise Unscreened(f"whether {self} is a number")
        return False

    @property
    def is_Integer(self) -> bool:  # sympy's spelling: the analysis reads both kinds of value the same way
        return self.is_number and isinstance(self.constant, int)

    @property
    def is_Symbol(self) -> bool:
        if self.is_number or len(self.terms) != 1:  # (an atom sympy may make a symbol: gives up, as is_number)
            return False
        ((monomial, coefficient),) = self.terms.items()
        return coefficient == 1 and len(monomial) == 1 and next(iter(monomial))[1] == 1 and \
            isinstance(next(iter(monomial))[0], str)

    @property
    def free_symbols(self) -> set[str]:
        names: set[str] = set()
        for monomial in self.terms:
            for variable, _ in monomial:
                names |= {variable} if isinstance(variable, str) else variable.free_symbols
        return names

    @property
    def degree(self) -> int:
        return max((sum(p for _, p in m) for m in self.terms), default=0)

    def variables(self) -> set:
        return {v for monomial in self.terms for v, _ in monomial}

    # --- arithmetic -----------------------------------------------------------------------------------------------
    def __add__(self, other):
        other = _lift_or_none(other)
        if other is None:
            return NotImplemented
        terms = dict(self.terms)
        for m, c in other.terms.items():
            terms[m] = _normal(terms.get(m, 0) + c)
        if len(terms) > MAX_TERMS:
            raise Unscreened("a sum of sizes too large to screen")
        return Poly(terms, self, other)

    __radd__ = __add__

    def __neg__(self):
        return Poly({m: -c for m, c in self.terms.items()}, self)

    def __sub__(self, other):
        other = _lift_or_none(other)
        return NotImplemented if other is None else self + (-other)

    def __rsub__(self, other):
        other = _lift_or_none(other)
        return NotImplemented if other is None else other + (-self)

    def __mul__(self, other):
        other = _lift_or_none(other)
        if other is None:
            return NotImplemented
        if len(self.terms) * len(other.terms) > MAX_TERMS ** 2 or self.degree + other.degree > MAX_DEGREE:
            raise Unscreened("a product of sizes too large to screen")
        terms: dict = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in other.terms.items():
                m = _times(m1, m2)
                terms[m] = _normal(terms.get(m, 0) + c1 * c2)
        if len(terms) > MAX_TERMS:
            raise Unscreened("a product of sizes too large to screen")
        return Poly(terms, self, other)

    __rmul__ = __mul__

    def __truediv__(self, other):
        """Exact where the divisor is a number or one term whose variables each term here holds; else Unscreened."""
        other = lift(other)
        if len(other.terms) != 1:
            raise ZeroDivisionError("division by zero") if not other.terms else Unscreened("division by a sum")
        ((monomial, coefficient),) = other.terms.items()
        terms = {}
        for m, c in self.terms.items():
            powers = dict(m)
            for v, p in monomial:
                if powers.get(v, 0) < p:
                    raise Unscreened("a division that leaves a fraction of sizes")
                powers[v] -= p
            terms[frozenset((v, p) for v, p in powers.items() if p)] = _normal(Fraction(c) / coefficient)
        return Poly(terms, self, other)

    def __rtruediv__(self, other):
        return lift(other) / self

    # --- comparing ------------------------------------------------------------------------------------------------
    def __eq__(self, other):
        """Equal as polynomials. Where they differ by an atom, sympy may still find them equal (`Mod(2*T+1, 2)` is
        1 to sympy): the screen gives up rather than answer no (a review's Squeeze then dropped a dim sympy did)."""
        other = _lift_or_none(other)
        if other is None:
            return NotImplemented
        if self.terms == other.terms:
            return True
        if any(isinstance(v, Atom) for v in (*self.variables(), *other.variables())):
            raise Unscreened(f"whether {self} equals {other}")
        return False

    def __hash__(self):
        value = self.constant
        return hash(value) if value is not None else hash(frozenset(self.terms.items()))  # a number hashes as one

    def _number(self, what: str):
        value = self.constant
        if value is None:
            raise Unscreened(f"{what} of a size that is not a number: {self}")
        return value

    def __lt__(self, other):
        return self._number("a comparison") < lift(other)._number("a comparison")

    def __le__(self, other):
        return self._number("a comparison") <= lift(other)._number("a comparison")

    def __gt__(self, other):
        return self._number("a comparison") > lift(other)._number("a comparison")

    def __ge__(self, other):
        return self._number("a comparison") >= lift(other)._number("a comparison")

    def __bool__(self):
        return bool(self._number("the truth"))

    def __int__(self):
        return int(self._number("the integer value"))

    def __str__(self) -> str:
        if not self.terms:
            return "0"
        parts = []
        for monomial, c in sorted(self.terms.items(), key=lambda t: sorted(str(v) for v, _ in t[0])):
            factors = [str(v) if p == 1 else f"{v}**{p}" for v, p in sorted(monomial, key=lambda t: str(t[0]))]
            parts.append("*".join(([str(c)] if c != 1 or not factors else []) + factors))
        return " + ".join(parts)

    __repr__ = __str__


def _variable(v) -> Poly:
    return Poly({frozenset({(v, 1)}): 1})


def _normal(c):
    return c.numerator if isinstance(c, Fraction) and c.denominator == 1 else c


def _times(m1: frozenset, m2: frozenset) -> frozenset:
    if not m1 or not m2:
        return m1 or m2
    powers = dict(m1)
    for v, p in m2:
        powers[v] = powers.get(v, 0) + p
    return frozenset(powers.items())


def _lift_or_none(value) -> Poly | None:
    try:
        return lift(value)
    except Unscreened:
        return None


def lift(value) -> Poly:
    """A size as a Poly: ints (numpy's too) and exact fractions; anything else (text, floats) is not screened."""
    if isinstance(value, Poly):
        return value
    if isinstance(value, bool | int | np.integer):
        return Poly({ONE: int(value)})
    if isinstance(value, Fraction):
        return Poly({ONE: _normal(value)})
    raise Unscreened(f"a {type(value).__name__} among the sizes")


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
    return Poly(whole), Poly(rest)


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
        return _variable(name)

    @staticmethod
    def floor(value) -> Poly:
        value = lift(value)
        whole, rest = _split(value)
        if rest.constant is not None:  # 0 <= rest < 1
            return Poly(whole.terms, value)
        return whole + _variable(Atom("floor", (rest,)))

    @staticmethod
    def ceiling(value) -> Poly:
        value = lift(value)
        whole, rest = _split(value)
        if rest.constant is not None:
            return Poly((whole + (1 if rest.constant else 0)).terms, value)
        return whole + _variable(Atom("ceiling", (rest,)))

    @classmethod
    def floor_div(cls, a, n) -> Poly:
        return cls.floor(lift(a) / n)

    @classmethod
    def floordiv(cls, a, b) -> Poly:
        """The pass' integer Div: truncated for numbers, floored or divided for sizes, as `SympyArith.floordiv`;
        which branch is taken is asked with `is_number`, so a value sympy may make a number gives up here."""
        a, b = lift(a), lift(b)
        if a.is_number and b.is_number:
            return lift(Fraction(a.constant) / b.constant) if not (a.is_Integer and b.is_Integer) else \
                lift(int(Fraction(a.constant, b.constant)))  # sympy's int(a / b): towards zero
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
        return _variable(Atom("Mod", (a, b)))

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
            factors = [chosen[v] if v in chosen else _variable(v) for v, p in monomial for _ in range(p)]
            out = out + math.prod(factors, start=lift(c))
        return out


def _extreme(func: str, a: Poly, b: Poly) -> Poly:
    """Min or Max of two sizes: the one that is, at every size; else an atom."""
    ordered = (b, a) if _at_least(a, b) else (a, b) if _at_least(b, a) else None
    if ordered is None:
        return _variable(Atom(func, frozenset({a, b})))
    chosen = ordered[0] if func == "Min" else ordered[1]
    # sympy decides a Min over one size as well (Min(1, T) is 1, Min(1, T*T) is 1); over several, not always
    # (Min(2, B + T) stays): a number chosen there is marked as reached from sizes
    return Poly(chosen.terms, *((a, b) if len((a - b).free_symbols) > 1 else (chosen,)))


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
