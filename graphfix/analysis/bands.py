"""The hypothesis space of a two-valued matrix a trace baked (a mask): every band `lo <= j - i <= hi` (tril or triu
of any offset, a sliding window of any width, eye) that reproduces it at the export size, told apart by what each
gives at a larger size. Values that follow no such family are learned, never regrown. (The space of a baked size
is graphfix.analysis.hypotheses.)

    for band in structures(mask == 0, rows_grow=True, cols_grow=True): band.holds(12, 12)
    hypotheses(value, baked_axes, proposed_band)  # the proposal checked, then the others that fit
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


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
