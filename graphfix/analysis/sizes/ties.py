"""Input dims the graph ties together, and a binding of probe sizes that keeps them so: a padding mask's frames
computed from the audio's samples (`frames = floor(samples/320)`), `T = U/3` where a Reshape groups U frames in
threes beside a T-frame input. Fed apart, the model fails where PyTorch fails too."""

from __future__ import annotations

from graphfix.analysis.sizes.core import Sizes
from graphfix.core.lazy import sympy  # imported on first use: see graphfix.core.lazy


def relations(sizes: Sizes) -> dict[str, sympy.Expr]:
    """Graph-input dims that a constraint ties to an expression of the others: `frames = floor(samples/320)` when a
    padding mask's length must equal the encoder's frame count, `T = U/3` where a Reshape groups U in threes that
    meet T. Inputs fed at other sizes are invalid inputs. Not a dim that an integer Div of sizes divides
    (`H // K` heads): the model may handle the remainder, and tied to multiples the probe would never see it
    fail (helper 65)."""
    found: dict[str, sympy.Expr] = {}
    for constraint in sizes.constraints:
        for left, right in ((constraint.left, constraint.right), (constraint.right, constraint.left)):
            if left.is_Symbol and left.name not in found and right.free_symbols and left not in right.free_symbols:
                found[left.name] = right
                break
    return found


def bind(binding: dict[str, int], tied: dict[str, sympy.Expr]) -> dict[str, int]:
    """`binding` with each tied dim computed from the others. Where that gives no valid size (too few samples for
    a single frame), the one dim it is computed from grows to the least size that gives one: a front end's
    minimum length. Kept as chosen where no size up to MAX_GROWN does."""
    out = dict(binding)
    for name, expr in tied.items():
        symbols = {s: out[s.name] for s in expr.free_symbols if s.name in out}
        if len(symbols) != len(expr.free_symbols):
            continue  # depends on a dim this binding does not size
        value = expr.subs(symbols)
        if not (value.is_Integer and value >= 1) and len(symbols) == 1:
            (symbol, start), = symbols.items()
            grown = _least_valid(expr, symbol, start)
            if grown is not None:
                out[symbol.name], value = grown, expr.subs(symbol, grown)
        if value.is_Integer and value >= 1:
            out[name] = int(value)
    return out


MAX_GROWN = 1 << 22


NEAR = 64  # sizes tried one by one before doubling: a tie met at every k-th size is met within k


def _least_valid(expr: sympy.Expr, symbol: sympy.Symbol, start: int) -> int | None:
    """The least size >= start at which `expr` is a whole number >= 1; None when none is up to MAX_GROWN. A tie
    that holds at every k-th size (`T = U / 3` where a Reshape groups U in threes) is met within NEAR sizes of
    `start`: doubling from 13 never meets a multiple of 3. Past those, `expr` is taken as non-decreasing in
    `symbol`, as a front end's output length is, and its least valid size is doubled to, then bisected."""
    def valid(size: int) -> bool:
        value = expr.subs(symbol, size)
        return bool(value.is_Integer and value >= 1)

    near = next((size for size in range(max(start, 1), max(start, 1) + NEAR) if valid(size)), None)
    if near is not None:
        return near
    high = max(start, 1)
    while not valid(high):
        if high > MAX_GROWN:
            return None
        high *= 2
    low = max(start, 1)
    while low < high:  # the least valid size in [low, high]
        mid = (low + high) // 2
        low, high = (low, mid) if valid(mid) else (mid + 1, high)
    return high
