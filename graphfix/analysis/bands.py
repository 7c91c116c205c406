"""The hypothesis space of a two-valued matrix a trace baked (a mask): every band `lo <= j - i <= hi` (tril or triu
of any offset, a sliding window of any width, eye) that reproduces it at the export size, told apart by what each
gives at a larger size. Values that follow no such family are learned, never regrown. (The space of a baked size
is graphfix.analysis.hypotheses.) Besides the bands: what else a uniform constant may be (`uniform_alternatives`:
a mask whose edge lies past the export size, a value computed from the size).

    for band in structures(mask == 0, rows_grow=True, cols_grow=True): band.holds(12, 12)
    hypotheses(value, baked_axes, proposed_band)  # the proposal checked, then the others that fit
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from graphfix.analysis.broadcast import BATCH_NAME

if TYPE_CHECKING:
    from graphfix.analysis.structured import Baked


@dataclass(frozen=True)
class Structure:
    """A two-valued matrix as the band `lo <= j - i <= hi` (None: no edge on that side) of `inside`."""

    lo: int | None
    hi: int | None

    @property
    def family(self) -> str:
        if self.lo is not None and self.lo == self.hi:
            return "eye"
        return "tril" if self.lo is None else "triu" if self.hi is None else "band"

    def holds(self, rows: int, cols: int) -> np.ndarray:
        offset = np.arange(cols)[None, :] - np.arange(rows)[:, None]
        above = offset >= self.lo if self.lo is not None else np.ones_like(offset, bool)
        return above & (offset <= self.hi) if self.hi is not None else above

    def __str__(self) -> str:
        if self.family == "eye":
            return f"eye (k={self.lo})"
        if self.family == "band":
            return f"band {self.lo} <= j - i <= {self.hi}"
        return f"{self.family} (k={self.hi if self.lo is None else self.lo})"


@dataclass(frozen=True)
class Complement:
    """The other value of a two-valued mask laid out as `structure` (a mask given by where it is not)."""

    structure: Structure

    def __str__(self) -> str:
        return f"not {self.structure}"


def structures(where: np.ndarray, rows_grow: bool, cols_grow: bool, grow: int = 5) -> list[Structure]:
    """The bands (tril/triu of any offset, windows of any width, eye) equal to the boolean matrix `where` at its
    export size, one per distinct matrix they give with `grow` more rows/columns along the axes that follow sizes
    (a window wider than that is listed as its narrowest representative), simplest first."""
    rows, cols = where.shape
    if not where.any():
        return []
    offsets = np.arange(cols)[None, :] - np.arange(rows)[:, None]
    low, high = int(offsets[where].min()), int(offsets[where].max())
    # an edge inside the matrix is shown; one at its corner along a growing axis may lie anywhere past it
    los = [low, None, *range(-(rows - 1) - grow, low)] if low == -(rows - 1) and rows_grow else [low]
    his = [high, None, *range(high + 1, cols + grow)] if high == cols - 1 and cols_grow else [high]
    if low == -(rows - 1) and not rows_grow:
        los.append(None)
    if high == cols - 1 and not cols_grow:
        his.append(None)
    big = (rows + grow * rows_grow, cols + grow * cols_grow)
    found: dict[bytes, Structure] = {}
    for lo, hi in itertools.product(los, his):
        if lo is not None and hi is not None and lo > hi:
            continue
        shape = Structure(lo, hi)
        if not np.array_equal(shape.holds(rows, cols), where):
            continue
        key = shape.holds(*big).tobytes()
        if key not in found or _simpler(shape, found[key]):
            found[key] = shape
    return sorted(found.values(), key=_complexity)


def _complexity(s: Structure) -> tuple:
    return ((s.lo is not None) + (s.hi is not None), abs(s.lo or 0) + abs(s.hi or 0))


def _simpler(a: Structure, b: Structure) -> bool:
    return _complexity(a) < _complexity(b)


def hypotheses(value: np.ndarray, baked: list[int], band) -> list[Structure] | str:
    """The masks (`structures`) that give the baked constant `value` at the export size, told apart by what they
    give at larger sizes, the proposed `band` (graphfix.analysis.structured.Band) first; or why the proposal does
    not reproduce the constant (its values are not the mask's two, or its pattern differs)."""
    matrix = value.reshape(value.shape[-2:])
    levels = {v.item() for v in np.unique(matrix)}
    if levels != {band.inside.item(), band.outside.item()}:
        return f"its values {sorted(levels)} are not the proposed mask's ({band.inside}, {band.outside}): learned"
    where = matrix == band.inside
    proposal = Structure(band.lo, band.hi)
    if not np.array_equal(proposal.holds(*matrix.shape), where):
        return f"the proposed {proposal} does not give the constant at its export size"
    rows_grow, cols_grow = value.ndim - 2 in baked, value.ndim - 1 in baked
    grow = (matrix.shape[0] + 5 * rows_grow, matrix.shape[1] + 5 * cols_grow)
    # the masks of either value: `tril` as the ones, or as the complement of the zeros' `triu`
    found = {s.holds(*grow).tobytes(): s for s in structures(where, rows_grow, cols_grow)}
    for s in structures(~where, rows_grow, cols_grow):
        found.setdefault((~s.holds(*grow)).tobytes(), Complement(s))
    mine = proposal.holds(*grow).tobytes()
    if mine not in found:
        return f"the proposed {proposal} is not among the masks that give it ({', '.join(map(str, found.values()))})"
    return [proposal] + [s for key, s in found.items() if key != mine]


def uniform_alternatives(baked: Baked) -> str:
    """What else gives the uniform constant `baked` at its export sizes, or '' where nothing does:
    - a value computed from the sizes (`full((T,), 1 / T)`, `ones(T, 1) / (T - 1)`, `full((T, 1), log(T))`,
      `full((B, 1), float(T))`): any value but 0 and 1 (True, False) may be some f(T) at the export size, along
      batch dims too;
    - a mask whose edge lies past the export size (a window wider than T, chunks of T or more, a cutoff at a fixed
      length), where the constant sets positions against positions (rows and columns of one size) or holds what a
      mask lets everything through with as its op applies it (`MASK_VALUES`: True; 0 added; 0 or 1 multiplied).
      Not along batch dims alone: no model masks its batch by position.
    `x + ones(int(T), 8)` and an initial state `zeros(int(B), H)` are neither: an added mask is 0 where it lets
    through, and 0 and 1 are what a size-free constant holds."""
    item = baked.value.reshape(-1)[0].item() if baked.value.size else None
    if not isinstance(item, bool | int | float):
        return ""  # empty, complex, text: nothing a size or a mask gives
    reasons = []
    dims = [dim for _, dim in baked.axes]
    op = baked.node.op
    let_through = isinstance(item, bool) or item == 0 or (item == 1 and op not in ("Add", "Sub", "Div", "Pow")) or (
        item <= -1e4 and op not in ("Mul", "Div", "Min")) or (item == math.inf and op == "Min")
    if op == "Sub" and baked.index == 0:
        let_through = False  # c - x: the constant is no mask applied to x
    if not all(BATCH_NAME.search(dim) for dim in dims) and (let_through or len(set(dims)) < len(dims)):
        reasons.append("a mask whose edge lies past the export size: a window wider than it, chunks or blocks of "
                       "that size or more, a cutoff at a fixed length")
    if item not in (0, 1):  # True and False are 1 and 0: what a size-free constant holds
        reasons.append(f"a value computed from the sizes (1/(T-1), log T, T, ...) gives it at the export size: "
                       f"{item:g}{_of_a_size(item, baked)} (`torch.full((T,), 1 / T)` keeps no such value at other "
                       "sizes)")
    return "; or ".join(reasons)


def _of_a_size(item: float, baked: Baked) -> str:
    """', which is 1/T at T=5'-style text where the value is a size's simplest function there, else ''."""
    for axis, dim in baked.axes:
        n = int(baked.value.shape[axis])
        for text, of_size in ((dim, n), (f"1/{dim}", 1 / n), (f"sqrt({dim})", n ** 0.5), (f"1/sqrt({dim})", n ** -0.5)):
            if n > 1 and math.isclose(item, of_size, rel_tol=1e-6):
                return f", which is {text} at {dim}={n}"
    return ""
