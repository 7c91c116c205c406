"""Steps the graph's shapes need (graphfix.validate.steps): read from a constraint's zeros over sizes 1..SPAN."""

from __future__ import annotations

from graphfix.core.lazy import sympy
from graphfix.validate.steps import _step


def test_a_size_where_the_difference_is_undefined_is_no_zero():
    """torchvision's swin_v2_t exported with dynamo spells its rolled windows through `Mod(4, pad_H)`, a Mod by 0
    at H < 4: sympy raises ZeroDivisionError there, and `diagnose` crashed ("internal error: ZeroDivisionError:
    Modulo by zero") once its failure was looked up among the graph's steps."""
    h = sympy.Symbol("H", integer=True, positive=True)
    difference = 8 * sympy.floor(h / 8) - h + sympy.Mod(4, sympy.floor(h / 4)) - 4  # 0 at multiples of 8 from 24
    assert _step(difference, h) == (8, (0,))
