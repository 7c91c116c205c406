"""Which function of the input sizes a traced constant is, read from its values in traces at several sizes.

A constant that a trace baked (`int(h)`, `math.ceil(h / p)`) has one value per trace; a constant that moves
between two traces of one module that differ in one dim is a function of that dim. The family searched:

    one dim d:      a * g(d) + b              (MobileViT's `ceil(H / p)`, a Wenet `(T - 1) // 2 - 1`)
    several dims:   c * g1(d1) * g2(d2) ...   (MobileViT's `B * C * ceil(H / p)`)
    one dim d:      'SAME' padding's begin or end over g(d)   (transformers' MobileNetV2 `tf_padding`)

with g(d) = (d + r) // k, k in 1..16, 32 or 64 (a network's last stages: BiT's 'SAME' pads read
ceil(H / 32)) and 0 <= r < k (r = 0 a floor, r = k - 1 a ceiling, and between them a
floor after a ceiling, as a ceil-mode pool then a floor one: `ceil(T / 2) // 3` is `(T + 1) // 6`), and a, b, c
integers (a, c not 0). TF-style 'SAME' padding pads a length n before a window reaching w at stride s by
`max(w - (n % s or s), 0)` in all, half of it (rounded down) at the begin (s in SAME_STRIDES, w in SAME_REACH).
A fit must reproduce every observation. Fits that agree at every size are one fit; fits that do not are told
apart by a trace at a size where they disagree (`next_split`), which the caller makes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from graphfix.analysis.same_padding import same_total

Sizes = Mapping[str, int]  # a dim's name (the export's dim_param) -> its size in one trace
Observation = tuple[Sizes, int]  # the sizes of a trace, and the constant's value in it

DIVISORS = (*range(1, 17), 32, 64)
REACH = 8  # fits are compared, and split, at sizes up to REACH times the export size
NEAR = 512  # of those, every size this near the export size (and below it) is used; farther ones thinned out
FAR = 256  # to this many, evenly spread: the arithmetic stays bounded at 480000 samples
MAX_PRODUCTS = 4096  # products of several dims' terms tried, the simplest terms first
SAME_STRIDES = range(2, 5)  # the strides of the 'SAME' pads fitted (a Conv's or Pool's: 2, rarely 3 or 4)
SAME_REACH = range(2, 17)  # and how far their windows reach (dilation * (kernel - 1) + 1)


@dataclass(frozen=True)
class Term:
    """`(d + r) // k` of one dim: `d // k` (r = 0), `ceil(d / k)` (r = k - 1), or between."""

    dim: str
    k: int = 1
    r: int = 0

    def at(self, sizes: Sizes) -> int:
        return (sizes[self.dim] + self.r) // self.k

    def __str__(self) -> str:
        if self.k == 1:
            return self.dim
        if self.r == self.k - 1:
            return f"ceil({self.dim} / {self.k})"
        return f"({self.dim} + {self.r}) // {self.k}" if self.r else f"{self.dim} // {self.k}"


@dataclass(frozen=True)
class Same:
    """TF-style 'SAME' padding's begin (`end` False) or end over a length, for a window reaching `reach` at
    `stride`: the total `max(reach - (n % stride or stride), 0)`, half of it (rounded down) at the begin."""

    reach: int
    stride: int
    end: bool

    def of(self, length):
        """The pad over `length` (an integer, or an integer array of lengths >= 0)."""
        total = same_total(self.reach, self.stride, length)
        return total - total // 2 if self.end else total // 2


@dataclass(frozen=True)
class Fit:
    """scale * (product of terms) + offset; with no term, the constant `offset` (scale 0); with `same`, that
    padding over the one term's length."""

    terms: tuple[Term, ...]
    scale: int = 1
    offset: int = 0
    same: Same | None = None

    def at(self, sizes: Sizes) -> int:
        if self.same:
            return int(self.same.of(self.terms[0].at(sizes)))
        return self.scale * math.prod(t.at(sizes) for t in self.terms) + self.offset

    @property
    def cost(self) -> tuple[int, ...]:
        """Simpler first: a size before a pad (of pads, smaller strides, then reaches), fewer terms, no scale, no
        offset, floor, then ceiling, then between, smaller divisors."""
        return (self.same is not None, *((self.same.stride, self.same.reach) if self.same else ()),
                len(self.terms), self.scale != 1, self.offset != 0,
                sum(0 if t.r == 0 else 1 if t.r == t.k - 1 else 2 for t in self.terms), sum(t.k for t in self.terms))

    def __str__(self) -> str:
        if self.same:
            return (f"the {'end' if self.same.end else 'begin'} of 'SAME' padding over {self.terms[0]} (window "
                    f"{self.same.reach}, stride {self.same.stride})")
        if not self.terms:
            return str(self.offset)
        grouped = len(self.terms) > 1 or self.scale != 1  # `3 * (T // 3)`, never `3 * T // 3`
        text = " * ".join(f"({t})" if grouped and t.k != 1 else str(t) for t in self.terms)
        if self.scale != 1:
            text = f"{self.scale} * {text}"
        if self.offset:
            text += f" {'+' if self.offset > 0 else '-'} {abs(self.offset)}"
        return text


def sizes_of(export: int) -> list[int]:
    """The sizes of a dim, from 1 to REACH times its export size, at which fits are compared and split: all of
    them for a small export size; near it and at the start all, and a spread sample elsewhere."""
    top = REACH * export
    if top <= 2 * NEAR + FAR:
        return list(range(1, top + 1))
    near = range(max(1, export - NEAR), export + NEAR + 1)
    spread = range(1, top + 1, max(1, top // FAR))
    return sorted({*range(1, NEAR + 1), *near, *spread, top})


def fits(observations: Sequence[Observation], base: Sizes) -> list[Fit]:
    """Every fit in the family that reproduces all observations, one per class of fits that agree at every size
    (up to REACH times the export size), cheapest first. `base` is the export's sizes, the first observation's."""
    at_export = _at_export(observations, base)
    moving = [dim for dim in base if any(v != at_export for s, v in observations if _only(s, base) == {dim})]
    if not moving:
        return []
    if len(moving) == 1:
        found = [f for term in _terms(moving[0], base[moving[0]]) for f in _linear(term, observations, base)]
        found += _same(moving[0], observations, base[moving[0]])
    else:
        per_dim = [[t for t in _terms(dim, base[dim]) if _ratios_hold(t, observations, base)] for dim in moving]
        combos = itertools.islice(itertools.product(*per_dim), MAX_PRODUCTS)  # past it: fewer fits, none wrong
        found = [f for combo in combos for f in _product(combo, at_export, base)]
    matching = [f for f in found if all(f.at(s) == v for s, v in observations)]
    return _distinct(sorted(matching, key=lambda f: f.cost), base)


def next_split(candidates: Sequence[Fit], base: Sizes, dim: str, valid: Iterable[int], outside: Iterable[int],
               avoid: Iterable[int] = ()) -> int | None:
    """The next size of `dim` (the others at export) to trace to tell the candidates apart, or None when there is
    none to try. The sizes where they disagree are taken by class, their greatest common divisor with the sizes
    the trace kept the graph at (`valid`), the largest first: a model's own domain is often the multiples of a
    stride or a patch, and a trace outside it takes another path. A class counts as outside the domain once its
    nearest size above the export size and its nearest below (where there is one) left the graph (`outside`):
    the sizes before a front end's rounding can keep it where those after do not. Sizes in `avoid` are not
    traced."""
    export, valid, outside, avoid = base[dim], set(valid), set(outside), set(avoid)
    lattice = math.gcd(*valid)
    classes: dict[int, list[int]] = {}
    for size in sizes_of(export):
        if size not in valid and size not in avoid and len({c.at({**base, dim: size}) for c in candidates}) > 1:
            classes.setdefault(math.gcd(size, lattice), []).append(size)
    for _, sizes in sorted(classes.items(), reverse=True):
        above = [s for s in sizes if s > export]
        below = [s for s in reversed(sizes) if s < export]
        for side in (above, below):
            if side and side[0] not in outside:
                return side[0]
    return None


def _at_export(observations: Sequence[Observation], base: Sizes) -> int:
    return next(value for sizes, value in observations if dict(sizes) == dict(base))


def _only(sizes: Sizes, base: Sizes) -> set[str]:
    """The dims in which `sizes` differ from the export's."""
    return {dim for dim in base if sizes[dim] != base[dim]}


def _terms(dim: str, export: int) -> list[Term]:
    """The terms of `dim` whose divisor's period fits twice in the sizes fits are compared at (REACH times the
    export size): one period holds a single step, which a term of another divisor matches by chance
    (`(T + 15) // 64 + 1` is `ceil(T / 48)` at every size to 111: helper 160)."""
    return [Term(dim)] + [Term(dim, k, r) for k in DIVISORS if k > 1 and 2 * k <= REACH * export for r in range(k)]


def _linear(term: Term, observations: Sequence[Observation], base: Sizes) -> list[Fit]:
    """a * term + b through the export's value and one other observation where the term differs."""
    g0, v0 = term.at(base), _at_export(observations, base)
    other = next(((term.at(s), v) for s, v in observations if term.at(s) != g0), None)
    if other is None:
        return []
    g1, v1 = other
    if (v1 - v0) % (g1 - g0):
        return []
    scale = (v1 - v0) // (g1 - g0)
    return [Fit((term,), scale, v0 - scale * g0)] if scale else []


def _same(dim: str, observations: Sequence[Observation], export: int) -> list[Fit]:
    """Each 'SAME' begin or end over a term of `dim` that reproduces every observation (pads are small numbers
    that move with the length's residue: none is tried for a value past the largest reach), where its period, the
    term's divisor times the stride, fits twice in the sizes compared (as `_terms`)."""
    values = np.array([v for _, v in observations], dtype=np.int64)
    if values.min() < 0 or values.max() >= max(SAME_REACH):
        return []
    sizes = np.array([s[dim] for s, _ in observations], dtype=np.int64)
    reaches = np.array(SAME_REACH, dtype=np.int64)[:, None]
    found = []
    for term in _terms(dim, export):
        lengths = (sizes + term.r) // term.k
        for stride in (s for s in SAME_STRIDES if 2 * term.k * s <= REACH * export):
            total = same_total(reaches, stride, lengths)  # every reach at once: a row per reach, a column per
            # observation
            for end, pads in ((False, total // 2), (True, total - total // 2)):
                found += [Fit((term,), same=Same(int(reaches[row, 0]), stride, end))
                          for row in np.flatnonzero((pads == values).all(axis=1))]
    return found


def _ratios_hold(term: Term, observations: Sequence[Observation], base: Sizes) -> bool:
    """With the other dims at export, value / value at export = term / term at export (a product's factor)."""
    g0, v0 = term.at(base), _at_export(observations, base)
    return g0 != 0 and all(v * g0 == v0 * term.at(s) for s, v in observations if _only(s, base) == {term.dim})


def _product(terms: tuple[Term, ...], value: int, base: Sizes) -> list[Fit]:
    at_export = math.prod(t.at(base) for t in terms)
    if at_export == 0 or value % at_export or value == 0:
        return []
    return [Fit(terms, value // at_export)]


def _distinct(candidates: list[Fit], base: Sizes) -> list[Fit]:
    """One fit per class of fits that agree at every size up to REACH times the export size (each dim alone): the
    first, cheapest, of each."""
    grid = {dim: np.array(sizes_of(export), dtype=np.int64) for dim, export in base.items()}
    kept: dict[tuple[int, ...], Fit] = {}
    for candidate in candidates:
        kept.setdefault(_values_on(candidate, base, grid), candidate)
    return list(kept.values())


def _values_on(fit: Fit, base: Sizes, grid: Mapping[str, np.ndarray]) -> tuple[int, ...]:
    """`fit` at each size of `grid` (one dim moved at a time, the others at export), in grid order: in int64
    arrays where no value can pass 2**62, else in Python's integers (the same numbers either way)."""
    values: list[int] = []
    for dim, sizes in grid.items():
        if fit.same:
            term = fit.terms[0]
            lengths = (sizes + term.r) // term.k if term.dim == dim else np.full(len(sizes), term.at(base))
            values += fit.same.of(lengths).tolist()
            continue
        top = {**base, dim: int(sizes[-1])}
        if abs(fit.scale) * math.prod(max(abs(t.at(base)), abs(t.at(top))) for t in fit.terms) + abs(fit.offset) \
                >= 1 << 62:
            values += [fit.at({**base, dim: int(size)}) for size in sizes]
            continue
        column = np.full(len(sizes), fit.scale, dtype=np.int64)
        for term in fit.terms:
            column *= (sizes + term.r) // term.k if term.dim == dim else term.at(base)
        values += (column + fit.offset).tolist()
    return tuple(values)
