"""The one positive whole root of a size equation: sympy.solve, bounded in time and asked once per equation.

sympy.solve simplifies each root it finds, and on the nested floor/Mod sizes of padded windows that takes seconds
a call. torchvision's swin_v2_t exported with dynamo (dynamic batch, H and W) has Reshapes whose element count
reads `192*B*(pad_H)*(pad_W) = 12288*floor(pad_H/8)*floor(pad_W/8)`, linear in B, each padded size spelt
`Mod(7*floor(H/4), 8) + floor(H/4)` up to four levels deep: one call took 1 to 40 s, and `diagnose --static` spent
167 s in 25 of them (GF004 and GF007 solving the same constraints) without printing anything. So sympy.solve
is bounded (`Solver`): each call gets STEP_S, one graph state's all together SOLVING_S. One that runs past it pins
no size (the analysis stays incomplete, never wrong), and the first such one becomes a note of the rule that asked
(an INFO `analysis-incomplete` finding, graphfix.pipeline.engine).

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
