"""The one positive whole root of a size equation: samples first, then sympy.solve, bounded in time.

sympy.solve simplifies each root it finds, and on the nested floor/Mod sizes of padded windows that takes seconds
a call. torchvision's swin_v2_t exported with dynamo (dynamic batch, H and W) has Reshapes whose element count
reads `192*B*(pad_H)*(pad_W) = 12288*floor(pad_H/8)*floor(pad_W/8)`, linear in B, each padded size spelt
`Mod(7*floor(H/4), 8) + floor(H/4)` up to four levels deep: one call took 1 to 40 s, and `diagnose --static` spent
167 s in 25 of them (GF004 and GF007 solving the same constraints) without printing anything. So:

- Samples first (`sample_roots`): with the other sizes set to a few values the equation is a polynomial with whole
  coefficients in the one symbol, whose whole roots cost milliseconds. A value that solves the equation at every
  size solves it at each sample: where the samples share no positive whole root, sympy would find none and is not
  asked. Where they share one, r, and the equation is linear in the symbol and 0 at r as written (`16*B*T = 112*B`
  at T = 7), r is its one root, which sympy.solve would return: it is not asked either.
- sympy.solve, for the rest, is bounded (`Solver`): each call gets STEP_S, one graph state's all together
  SOLVING_S. One that runs past it pins no size (the analysis stays incomplete, never wrong), and the first such one
  becomes a note of the rule that asked (an INFO `analysis-incomplete` finding, graphfix.pipeline.engine). Swin's
  samples share B = 1 (the export baked batch 1 there, which sympy cannot prove), so its equations end here.

A Solver also remembers each equation's answer: several rules solve the same constraints of one graph state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from graphfix.core.budget import OutOfTime, Watchdog
from graphfix.core.lazy import sympy  # imported on first use: see graphfix.core.lazy

if TYPE_CHECKING:
    from sympy import Expr, Symbol

STEP_S = 1.0  # one sympy.solve (a size equation's takes milliseconds; a padded window's, seconds)
SOLVING_S = 4.0  # one graph state's sympy.solve calls, all together
SAMPLES = (97, 151, 211)  # values of the other sizes at the screen's samples (past a stem's downsampling to 0)


@dataclass
class Solver:
    """The roots of one graph state's size equations: each equation solved once, sympy's time bounded, and the
    first equation it ran out of time on said in `notes` (the rule context's, which the engine reports)."""

    notes: list[str] = field(default_factory=list)
    spent: float = 0.0  # seconds in sympy.solve so far
    _roots: dict = field(default_factory=dict)  # equation -> (symbol, value) or None
    _noted: bool = False

    def one_root(self, equation: Expr, where: str = "") -> tuple[Symbol, int] | None:
        """The first symbol (by name) of which `equation` is a polynomial with one root, a positive whole one, and
        that root; None where there is none or sympy did not find it in time. `where` names the constraint."""
        if equation not in self._roots:
            self._roots[equation] = self._first_root(equation, where)
        return self._roots[equation]

    def _first_root(self, equation: Expr, where: str) -> tuple[Symbol, int] | None:
        for symbol in sorted(equation.free_symbols, key=str):
            if not equation.is_polynomial(symbol):
                continue  # inside a floor, Mod or Min: sympy cannot isolate it, after seconds of trying (timm's Swin)
            shared = sample_roots(equation, symbol)
            if shared is not None and not shared:
                continue  # the samples of the other sizes share no positive whole root: sympy finds none either
            if shared is not None and len(shared) == 1 and _linear_root(equation, symbol, next(iter(shared))):
                return symbol, next(iter(shared))
            roots = self.roots(equation, symbol, where)
            if roots is not None and len(roots) == 1 and roots[0].is_Integer and roots[0] > 0:
                return symbol, int(roots[0])
        return None

    def roots(self, equation: Expr, symbol: Symbol, where: str = "") -> list | None:
        """sympy.solve's roots, within STEP_S and what is left of SOLVING_S; None where it ran out of time or
        cannot isolate the symbol."""
        seconds = min(STEP_S, SOLVING_S - self.spent)
        if seconds <= 0:
            self._note(where)
            return None
        start = time.monotonic()
        try:
            with Watchdog(seconds):
                return sympy.solve(equation, symbol)
        except (NotImplementedError, TypeError, ValueError):
            return None  # sympy cannot isolate this symbol (floor, Min): no proof from it
        except OutOfTime:  # caught outside the Watchdog's block: it can surface while leaving it
            self._note(where)
            return None
        finally:
            self.spent += time.monotonic() - start

    def _note(self, where: str) -> None:
        if not self._noted:
            self._noted = True
            self.notes.append(f"sympy ran out of time solving the size constraint at '{where}' ({STEP_S:g} s each, "
                              f"{SOLVING_S:g} s in all): it, and any later one sympy had to solve, pin no size")


def sample_roots(equation: Expr, symbol: Symbol) -> set[int] | None:
    """The positive whole roots in `symbol` that `equation` shares at every sample of the other sizes (empty: no
    value solves it at every size); None where no sample says (each leaves the equation undefined, a Mod by 0, or
    0 at every value of `symbol`)."""
    others = sorted(equation.free_symbols - {symbol}, key=str)
    shared: set[int] | None = None
    for base in SAMPLES[:1] if not others else SAMPLES:
        at = _at(equation, {s: base + 2 * k for k, s in enumerate(others)})
        whole = None if at is None else _whole_roots(at, symbol)
        if whole is None:
            continue
        shared = whole if shared is None else shared & whole
        if not shared:
            return shared
    return shared


def _linear_root(equation: Expr, symbol: Symbol, value: int) -> bool:
    """Whether `equation` is linear in `symbol` and 0 at `value` as written: then `value` is its one root."""
    return not equation.diff(symbol).has(symbol) and sympy.expand(equation.xreplace({symbol: value})) == 0


def _at(equation: Expr, values: dict) -> Expr | None:
    """`equation` with the sizes in `values` set (floors, Mods and Mins of numbers evaluate); None if undefined."""
    try:
        at = equation.xreplace({s: sympy.Integer(v) for s, v in values.items()})
    except (ArithmeticError, TypeError, ValueError):
        return None
    return None if at.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo) else at


def _whole_roots(at: Expr, symbol: Symbol) -> set[int] | None:
    """The positive whole roots of the one-symbol polynomial `at`; None where it is not one with rational
    coefficients or is 0 at every value."""
    if at.free_symbols - {symbol}:
        return None
    try:
        poly = sympy.Poly(at, symbol)
    except (sympy.PolynomialError, ArithmeticError, TypeError, ValueError):
        return None
    if poly.is_zero or poly.domain not in (sympy.ZZ, sympy.QQ):
        return None
    return {int(r) for r in poly.ground_roots() if r.is_Integer and r > 0}
