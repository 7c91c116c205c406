"""The hypothesis space of a two-valued matrix a trace baked (a mask): every band `lo <= j - i <= hi` (tril or triu
of any offset, a sliding window of any width, eye) that reproduces it at the export size, told apart by what each
gives at a larger size. Values that follow no such family are learned, never regrown. (The space of a baked size
is graphfix.analysis.hypotheses.) Besides the bands: what else a uniform constant may be (`uniform_alternatives`:
a mask whose edge lies past the export size, a value computed from the size). `band_rebuild`: how a mask is built
again over the sizes it follows, and why that is safe or not.

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
      batch dims too, and a float 1 along an axis exported at 2;
    - along any axis but a batch's, the same value up to an edge that lies past the export size and another past
      it: a mask (True, 0 added, 0 or 1 multiplied) of a window wider than T, chunks of T or more or a cutoff at a
      fixed length, and as much an indicator added or concatenated (`x + (arange(T) < 20)`, 1 inside the first
      20 frames; helper 54), or as a divisor (overlap-add's counts, `1 + (arange(T) >= 20)`: all ones at 12
      frames, helper 116), or as an exponent (`x ** (1 + (arange(T) >= 20))`, helper 145). No model masks its
      batch by position, so an initial state `zeros(int(B), H)` is neither.
    Every value the constant holds is judged (uniform along the baked axes, it may vary along the others)."""
    values = np.unique(baked.value) if baked.value.size and baked.value.dtype.kind in "biuf" else ()
    if len(values) == 0:
        return ""  # empty, complex, text: nothing a size or a mask gives
    reasons = []
    if not all(BATCH_NAME.search(dim) for _, dim in baked.axes):
        reasons.append("a mask or an added indicator whose edge lies past the export size: a window wider than it, "
                       "chunks or blocks of that size or more, a cutoff at a fixed length")
    sized = [v.item() for v in values if v.item() not in (0, 1) or _one_of_two(v.item(), baked)]
    if sized:
        item = sized[0]
        reasons.append(f"a value computed from the sizes (1/(T-1), log T, T, ...) gives it at the export size: "
                       f"{item:g}{_of_a_size(item, baked)} (`torch.full((T,), 1 / T)` keeps no such value at other "
                       "sizes)")
    return "; or ".join(reasons)


def _one_of_two(item: float, baked: Baked) -> bool:
    """A float 1 along an axis exported at 2, where 1/(n-1), n-1 and n/2 give it too (`full((1, B, H), 1 / (B - 1))`
    at B=2: helper 102). True, integer 1 and every 0 stay size-free values (a mask, an initial state of zeros)."""
    return item == 1 and baked.value.dtype.kind == "f" and any(baked.value.shape[a] == 2 for a, _ in baked.axes)


def _of_a_size(item: float, baked: Baked) -> str:
    """', which is 1/T at T=5'-style text where the value is a size's simplest function there, else ''."""
    for axis, dim in baked.axes:
        n = int(baked.value.shape[axis])
        for text, of_size in ((dim, n), (f"1/{dim}", 1 / n), (f"sqrt({dim})", n ** 0.5), (f"1/sqrt({dim})", n ** -0.5),
                             (f"1/({dim}-1)", 1 / (n - 1) if n > 1 else 0)):
            if n > 1 and math.isclose(item, of_size, rel_tol=1e-6):
                return f", which is {text} at {dim}={n}"
    return ""


@dataclass(frozen=True)
class Rebuild:
    """How a baked mask (`band`, with the masks `hypotheses` leaves) is built again over the sizes it follows."""

    op: str  # EyeLike or Trilu, over ConstantOfShape of the rows and columns
    entries: list  # rows and columns: (tensor, axis) read at run time, or a length that follows no size
    cols: str | None  # the fixed number of columns in PyTorch's words; None where the columns follow a size
    others: str  # what else gives the constant at the export size
    safe: bool
    reason: str


def band_rebuild(baked: Baked, band, masks: list) -> Rebuild:
    """The rebuild of the mask `baked` holds as `band` (graphfix.analysis.structured.Band), safe only where it is
    the one mask that gives the constant and no strided pattern does."""
    c, axes = baked, [a for a, _ in baked.axes]
    rows_cols = (c.value.ndim - 2, c.value.ndim - 1)  # a side that follows no size keeps its length
    entries = [(c.other, c.source(a)) if a in axes else int(c.value.shape[a]) for a in rows_cols]
    cols = None if rows_cols[1] in axes else str(c.value.shape[-1])
    op = "EyeLike" if band.kind == "eye" else "Trilu"
    # A mask that reaches the matrix's corner along a size hides its edge there: a window as wide as the
    # export size or wider (`tril` traced at T=4 is every sliding window of width >= 4) fits as well.
    others = "; ".join(band.others) or ", ".join(str(m) for m in masks[1:])
    # A diagonal or a window with both edges inside is also a sparse-attention head's pattern while its
    # stride reaches past the matrix: every s-th position besides (Sparse Transformer), shown from T > s.
    strided = band.kind in ("eye", "band")
    reason = (f"several masks give this constant at the export size: {band.show()} (applied, the simplest) "
              f"or {others}; the graph does not say which, and a sliding window rebuilt as a triangle is "
              "wrong at every longer size" if len(masks) > 1 else
              f"the constant is exactly {band.show()} with every edge inside the matrix (applied, the "
              "simplest), which is also a strided pattern, that position and every s-th one besides "
              "(`(i - j) % s == 0`: a Sparse Transformer head, a seasonal graph's links), for any stride s "
              "past the export size: the graph does not say which" if strided else
              f"the constant is exactly {band.show()} with every edge inside the matrix; {op} builds the same "
              "pattern at every size")
    return Rebuild(op, entries, cols, others, safe=not (len(masks) > 1 or strided), reason=reason)
