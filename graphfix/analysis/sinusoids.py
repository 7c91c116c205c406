"""Sinusoidal position tables: a constant that is `sin(p * w_k)` / `cos(p * w_k)` of the positions p = 0, 1, ...
along one axis, the frequencies w_k a geometric series (w_k = w_0 * r**k, r = base**(-1/m)).

The Transformer's table (`pe[:, 0::2] = sin(p * div_term)`, `pe[:, 1::2] = cos(...)`, interleaved), fairseq's,
ESPnet's and Whisper's (`cat([sin, cos])`, concatenated) and a rotary cache (`cos(cat([freqs, freqs]))`,
duplicated) are formulas: cut at the export length (`self.pe[:, :int(T)]`), the rows that are gone follow from
the ones kept. `sinusoid_table` identifies the layout and the frequencies from the values (two frequencies fix the
series, every entry is then checked), or says why the constant is not such a table; a learned table never is.

Most libraries compute in float32; a table computed in float64 (numpy's default) is regrown in float64 where its
values say so: a float64 table that agrees with the float64 formula to 1e-10 a row (closer than float32 can), a
float32 table that is the float64 formula rounded, bit for bit, where float32 arithmetic is not. Computed in
float32, such tables drifted by 7e-5 at 5000 rows. A table of float64 positions times float32 frequencies fits
neither and is computed in float32 (1e-4 off at 8000 rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_ROWS = 3  # positions 0 and 1 fit the series; the rows after them must agree with it
EXACT = 1e-10  # per row: a float64 table that agrees this well with the float64 formula was computed in float64
BASES = (10000.0, 500000.0, 1000.0, 100.0)  # a base a library uses is snapped to exactly (w = base**(-k/m))


@dataclass(frozen=True)
class Sinusoid:
    """Positions along `axis` (of the constant), one column per entry of `omega` along the last axis; `cosine`
    says which columns are cosines."""

    axis: int
    omega: np.ndarray  # float64 [columns]
    cosine: np.ndarray  # bool [columns]
    layout: str
    precision: type = np.float32  # what the formula is computed in: float32, or float64 where the values say so

    def values(self, length: int) -> np.ndarray:
        """[length, columns] in `precision`, computed as the libraries do: positions times frequencies, both in
        that precision."""
        angles = np.arange(length, dtype=self.precision)[:, None] * self.omega.astype(self.precision)[None, :]
        return np.where(self.cosine[None, :], np.cos(angles), np.sin(angles)).astype(self.precision)

    @property
    def step(self) -> float:
        """The step between positions the table shows: its largest frequency, which is 1 (`10000 ** 0`, snapped to
        exactly 1 by `_series`) for the integer positions 0, 1, 2, ... of every library's table. Any other step
        is positions scaled by a factor, which may follow the length (`arange(T) * 4 / T`)."""
        return float(self.omega.max())

    @property
    def standard(self) -> bool:
        """Integer positions (`step` 1) and frequencies of a base a library uses (`BASES`: 10000 ** (-k/m)). Any
        other base may be computed from the length (NTK scaling by the length, no branch: `base * (T / L) ** ...`),
        and so may a step: the table shows one length only."""
        omega = np.unique(self.omega)[::-1]
        if self.step != 1.0 or len(omega) < 2:
            return self.step == 1.0
        ratio = float(omega[1] / omega[0])
        return _snapped(ratio) != ratio or any(math.isclose(ratio, b ** (-1.0 / round(-math.log(b) / math.log(
            ratio))), rel_tol=1e-12) for b in BASES if ratio < 1)

    def doubt(self, rows: int) -> str:
        """Why the table, cut at the export length (`rows` positions), is not determined by its values: what
        else gives them there (GF006's reason for leaving its regrowth unsafe)."""
        if self.standard:
            return (f"every entry is sin or cos of its position times its column's frequency ({self.layout}, "
                    "frequencies a geometric series of a library's base): the formula of positions 0, 1, ..., T-1 "
                    "(applied, the simplest) gives these values at the export length, and so do positions capped "
                    f"at any c >= {rows - 1} (`arange(T).clamp(max=c)`, clipped relative positions), positions that "
                    f"restart every c >= {rows} frames (`arange(T) % c`, streaming chunks) and frequencies that change "
                    f"past a length L >= {rows} (dynamic NTK rotary scaling), which differ at longer inputs: the graph "
                    "shows one length and does not say which")
        if self.step == 1:
            return (f"every entry is sin or cos of its position times frequencies of a base no library uses "
                    f"({self.show()}), which may be computed from the length (NTK scaling by the length, "
                    "`base * (T / L) ** (d / (d - 2))`): the graph shows one length, and does not say which")
        return (f"every entry is sin or cos of positions 0, s, 2s, ... (s = {self.step:.6g}, not 1) times its "
                f"column's frequency ({self.layout}): positions scaled by a factor, which is {self.step:.6g} at "
                f"every length (applied, the simplest) or may follow the length (arange(T) * c / T, "
                f"{self.step:.6g} only at T={rows}): the graph does not say which")

    def past(self, rows: int) -> str:
        """What a whole table of `rows` rows, cut at a length, is past them (GF006's note on a rotary cache)."""
        return (f"a formula: if the module computes it for any length (a cache grown per call, as speechbrain's "
                f"rotary cache is), the repair can too; if {rows} is the model's own limit, or its frequencies change "
                "past it (dynamic NTK, YaRN), it must stay")

    def doubt_past(self, rows: int) -> str:
        """Why computing more than the `rows` rows of a whole table is a guess (the reason of GF006's fix)."""
        return (f"up to {rows} rows the formula gives the table's values; past them the graph does not say whether "
                "the module computes the same formula, stops, or scales it")

    def show(self) -> str:
        return (f"a sinusoidal position table ({self.layout}, {len(self.omega)} columns, frequencies "
                f"{self.omega[0]:.4g} ... {self.omega[-1]:.4g})")


LAYOUTS = {  # column j of D -> (frequency index k, cosine?)
    "interleaved sin/cos": lambda j, d: (j // 2, j % 2 == 1),
    "concatenated sin|cos": lambda j, d: (j % (d // 2), j >= d // 2),
    "concatenated cos|sin": lambda j, d: (j % (d // 2), j < d // 2),
    "duplicated cos": lambda j, d: (j % (d // 2), True),
    "duplicated sin": lambda j, d: (j % (d // 2), False),
    "cos": lambda j, d: (j, True),
    "sin": lambda j, d: (j, False),
}


def sinusoid_table(value: np.ndarray, axes: list[int]) -> Sinusoid | str:
    """The `Sinusoid` that `value` is, positions along its one baked axis and columns along its last, every other
    axis of size 1 (`[T, D]`, `[1, T, D]`, a rotary cache `[T, 1, 1, D]`), or why not."""
    if value.dtype.kind != "f":
        return f"its element type {value.dtype} is not a float"
    if len(axes) != 1 or not 0 <= axes[0] < value.ndim - 1 or \
            any(d != 1 for k, d in enumerate(value.shape[:-1]) if k != axes[0]):
        return "positions are not its one baked axis, its other axes but the columns of size 1"
    table = value.reshape(value.shape[axes[0]], value.shape[-1]).astype(np.float64)
    rows, cols = table.shape
    if rows < MIN_ROWS or cols < 2:
        return f"{rows} rows of {cols} columns are too few to tell a formula from learned values"
    starts = table[0]
    if not np.all(np.isclose(starts, 0, atol=1e-6) | np.isclose(starts, 1, atol=1e-6)):
        return "its first row is not sin(0) = 0 / cos(0) = 1 in every column"
    tolerance = 1e-5 + 2e-7 * rows * (1 + np.abs(table).max())  # float32 angles grow with the position
    for layout, column in LAYOUTS.items():
        index = [column(j, cols) for j in range(cols)]
        cosine = np.array([c for _, c in index])
        if not np.array_equal(cosine, np.isclose(starts, 1, atol=1e-6)) or (cols % 2 and "cat" in layout):
            continue
        omega = _series(table, index)
        if omega is None:
            continue
        found = Sinusoid(axes[0], omega, cosine, layout)
        exact = Sinusoid(axes[0], omega, cosine, layout, np.float64)
        if value.dtype == np.float64 and np.abs(exact.values(rows) - table).max() <= EXACT * rows:
            return exact  # computed in float64: it agrees with the float64 formula to rounding
        error = np.abs(found.values(rows) - table).max()
        if error > tolerance:
            continue
        if value.dtype == np.float32 and error > 0 and \
                np.abs(exact.values(rows).astype(np.float32) - table).max() == 0:
            return exact  # computed in float64 and stored as float32 (numpy's table in a float32 model)
        return found
    return "its columns are not sines and cosines of the positions at a geometric series of frequencies"


def _series(table: np.ndarray, index: list[tuple[int, bool]]) -> np.ndarray | None:
    """The frequency of each column: w_0 and w_1 read from row 1, the rest continue their ratio."""
    counts = 1 + max(k for k, _ in index)
    first = [_frequency(table, index, k) for k in range(min(counts, 2))]
    if any(w is None or w <= 0 for w in first):
        return None
    w0 = 1.0 if math.isclose(first[0], 1.0, rel_tol=1e-5) else first[0]
    ratio = first[1] / first[0] if counts > 1 else 1.0
    if not 0 < ratio <= 1:
        return None
    ratio = _snapped(ratio)
    return np.array([w0 * ratio ** k for k, _ in index], dtype=np.float64)


def _frequency(table: np.ndarray, index: list[tuple[int, bool]], k: int) -> float | None:
    """w_k from row 1: atan2 of its sine and cosine where both are there, else the inverse of the one that is."""
    sine = next((table[1, j] for j, (kk, c) in enumerate(index) if kk == k and not c), None)
    cosine = next((table[1, j] for j, (kk, c) in enumerate(index) if kk == k and c), None)
    if sine is not None and cosine is not None:
        return math.atan2(sine, cosine)
    if cosine is not None:
        return math.acos(max(-1.0, min(1.0, cosine)))
    return math.asin(max(-1.0, min(1.0, sine))) if sine is not None else None


def _snapped(ratio: float) -> float:
    """`ratio` as base**(-1/m) for a library's base and a whole m, where it is that to 1e-4; else as fitted."""
    for base in BASES:
        m = -math.log(base) / math.log(ratio) if ratio < 1 else 0
        if m > 0 and abs(m - round(m)) < 1e-4 * m:
            return base ** (-1.0 / round(m))
    return ratio
