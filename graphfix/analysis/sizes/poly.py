"""Exact sizes without sympy: the values of the size analysis' screen (see graphfix.analysis.sizes.screen).

Most graphs' sizes are polynomials in the input dims with integer coefficients: `B * T * 64`, `T + 1`, `2 * H`.
`Poly` holds one exactly (a dict from monomial to coefficient) and compares two by their canonical form, so
`B * T * 64 == 64 * T * B` is decided at once, as sympy's `expand(a - b) == 0` would decide it. floor, ceiling, Min,
Max and Mod of what is not a number become `Atom` variables, compared structurally (floor(T/2) is floor(T/2)).

Where a value cannot answer (a comparison of sizes, a division by a sum, whether a value holding an atom is a number
or equals another, a polynomial past MAX_TERMS or MAX_DEGREE), it raises `Unscreened`: the screen then gives up and
the full sympy analysis decides.
"""

from __future__ import annotations

import functools
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

    @property
    def flat(self) -> bool:
        """sympy holds the atom's arguments as these terms (`Poly.flat`): then it is one term to sympy too."""
        return all(a.flat for a in self.args)


class Poly:
    """A polynomial with rational coefficients in the symbols (input dims, by name) and atoms."""

    __slots__ = ("flat", "terms")

    def __init__(self, terms: dict, *operands: Poly, flat: bool | None = None):
        self.terms = terms if all(terms.values()) else {m: c for m, c in terms.items() if c}  # never changed later
        # `flat`: sympy holds this value as these terms too (see `derived`). Given by the operations that keep it
        # (`_flat_product`); elsewhere only a number made of numbers, a symbol, a number or an atom of flat
        # arguments is known to be
        if flat is None:
            flat = all(o.flat and _numeric(o.terms) for o in operands) if operands else \
                all(isinstance(v, str) or v.flat for v in self.variables())
        self.flat = flat

    @property
    def derived(self) -> bool:
        """A number reached from sizes that sympy may still hold as an expression: a cancellation of products of
        sums (`(T+1)**2 - T**2 - 2*T`), a decided Min, an atom's. Where every step was one that sympy's own
        evaluation expands as this polynomial does (sums, a number times a sum, products and quotients of single
        terms: `B*T*768 / (B*T*64)` is 12 to sympy too, a Reshape's -1), the number is sympy's as well."""
        return _numeric(self.terms) and not self.flat

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
        return Poly(terms, self, other, flat=self.flat and other.flat)  # sympy's Add gathers like terms

    __radd__ = __add__

    def __neg__(self):
        return Poly({m: -c for m, c in self.terms.items()}, self, flat=self.flat)

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
        if _numeric(self.terms) or _numeric(other.terms):  # scaled: no Poly is past the bounds (each op checks)
            number, poly = (other, self) if _numeric(other.terms) else (self, other)
            factor = number.terms.get(ONE, 0)
            return Poly({m: _normal(c * factor) for m, c in poly.terms.items()}, self, other,
                        flat=self.flat and other.flat)  # sympy spreads a number over a sum: 2*(T + 1) is 2*T + 2
        if len(self.terms) * len(other.terms) > MAX_TERMS ** 2 or self.degree + other.degree > MAX_DEGREE:
            raise Unscreened("a product of sizes too large to screen")
        terms: dict = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in other.terms.items():
                m = _times(m1, m2)
                terms[m] = _normal(terms.get(m, 0) + c1 * c2)
        if len(terms) > MAX_TERMS:
            raise Unscreened("a product of sizes too large to screen")
        return Poly(terms, self, other, flat=_flat_product(self, other))

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
        return Poly(terms, self, other, flat=_flat_product(self, other) or (self.flat and other.flat and
                                                                           monomial == ONE))

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


def _flat_product(a: Poly, b: Poly) -> bool:
    """Whether sympy holds a * b (or a / b) as its expanded terms: single terms multiply out (their powers are
    gathered, `T * T` is `T**2`), a sum times a sum or a single term stays a product (`B*(T + 1)`)."""
    return a.flat and b.flat and len(a.terms) <= 1 and len(b.terms) <= 1


def _numeric(terms: dict) -> bool:
    """Whether terms hold no variable (the constant term alone, or nothing): `not Poly(terms).variables()`."""
    return not terms or (len(terms) == 1 and ONE in terms)


def variable(v) -> Poly:
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
        return _whole(int(value))
    if isinstance(value, Fraction):
        return Poly({ONE: _normal(value)})
    raise Unscreened(f"a {type(value).__name__} among the sizes")


@functools.lru_cache(maxsize=4096)
def _whole(value: int) -> Poly:
    """One Poly per whole number (a Poly is never changed once made): the pass lifts the same few thousands of times."""
    return Poly({ONE: value})
