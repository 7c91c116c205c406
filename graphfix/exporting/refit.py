"""Constants that move between traces, rebuilt from the input's shape: what the graph alone cannot settle (#22).

A TorchScript export bakes every Python number the module computed from a size: MobileViT's patch counts
`math.ceil(H / p)`, `B * C * n_h`. From the graph these are not determined: a block of the opposite design (a fixed
grid of patches whose size follows the input) leaves the same graph, constants and all
(tests/frontends/test_patch_grid_ambiguity.py), so `graphfix repair` refuses both. The module settles it: traced
again at other sizes, the constants that follow a size move and the model's own stay. This module makes those
traces, one dim at a time, and fits each moving integer (graphfix.exporting.fit); where several fits remain it
traces again at a size where they disagree. The fitted constants are then computed from `Shape` of the input
that carries the dim, and `graphfix.export` proves the result against the module at sizes no trace used.

Only what every trace agrees on is rebuilt: the traces must keep the graph's structure (the same ops, in order;
a trace that takes another branch is outside the graph's domain and says nothing), and a moving constant is an
integer vector of one length in all. Fits still several after MAX_OUTSIDE traces that all left the graph's
domain differ only where the graph does not hold: the simplest is kept, and the note says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import onnx

from graphfix.exporting.fit import REACH, Fit, Observation, Sizes, fits, splitting_size
from graphfix.exporting.readings import Reading, Site, readings, structure
from graphfix.exporting.rebuild import rebuild

MAX_TRACES = 24  # traces beyond the first, in all: each is one export of the module
MAX_SECONDS = 120.0  # and the time they may take together: none is started after it
MAX_OUTSIDE = 3  # traces outside the graph's domain, for one dim, after which its fits count as one
FACTORS = (4, 5)  # each dim traced at these multiples of its export size (2x and 3x are the proof's sizes)

Trace = Callable[[Sizes], "onnx.ModelProto | None"]  # the module exported at these sizes, or None if it failed
Number = tuple[Site, int]  # a size vector's element, or a table's dim


@dataclass
class Refitted:
    """The export with its moving constants computed from the input's shape (`model`), what was rebuilt, and
    why anything was not (`notes`)."""

    model: onnx.ModelProto | None
    rebuilt: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def refit(model: onnx.ModelProto, dims: dict[str, tuple[str, int, int]], trace: Trace,
          avoid: Sequence[Sizes] = ()) -> Refitted:
    """Trace the module at other sizes, fit every number that moves, and rebuild its constant. `dims`: dim name ->
    (graph input, axis, export size). No trace is made at the sizes in `avoid`: the proof's, where the refitted
    model must earn its match on its own."""
    base = {name: size for name, (_, _, size) in dims.items()}
    if not base:
        return Refitted(None, notes=["the export declares no dynamic dim to trace at other sizes"])
    traces = _Traces(trace, model, base, avoid)
    for dim, export in base.items():
        for factor in FACTORS:
            traces.at({**base, dim: export * factor})
    kinds, unfit = traces.kinds()
    if unfit:
        return Refitted(None, notes=unfit)
    if not kinds:
        return Refitted(None, notes=["no constant moves between the traces at other sizes"])
    chosen, notes = _settle(traces, kinds, base)
    if chosen is None:
        return Refitted(None, notes=notes)
    rebuilt = [f"{traces.reader(site)}: {'' if kind == 'vector' else reading.family[0] + ' of shape '}"
               f"[{', '.join(map(str, fitted))}]" for site, (kind, reading, fitted) in sorted(chosen.items())]
    return Refitted(rebuild(model, chosen, dims), rebuilt, notes)


class _Traces:
    """The traces made so far: each site's reading in each trace that kept the graph's structure."""

    def __init__(self, trace: Trace, model: onnx.ModelProto, base: Sizes, avoid: Sequence[Sizes]):
        self.trace, self.structure, self.base = trace, structure(model), base
        self.avoid = [dict(sizes) for sizes in avoid]
        self.read: dict[Site, list[tuple[Sizes, Reading | None]]] = {
            site: [(base, reading)] for site, reading in readings(model).items()}
        self.outside: dict[str, list[int]] = {dim: [] for dim in base}
        self.made, self.deadline = 0, time.monotonic() + MAX_SECONDS

    def spent(self) -> bool:
        return self.made >= MAX_TRACES or time.monotonic() > self.deadline

    def at(self, sizes: Sizes) -> bool:
        """Trace at `sizes`; whether the trace kept the graph (its readings are then recorded)."""
        if self.spent() or dict(sizes) in self.avoid:
            return False
        self.made += 1
        traced = self.trace(sizes)
        if traced is None or structure(traced) != self.structure:
            for dim in self.base:
                if sizes[dim] != self.base[dim]:
                    self.outside[dim].append(sizes[dim])
            return False
        found = readings(traced)
        for site, seen in self.read.items():
            seen.append((sizes, found.get(site)))
        return True

    def kinds(self) -> tuple[dict[Site, str], list[str]]:
        """The sites that move, each a "vector" (its values move) or a "table" (its shape moves, its family
        stays); and why a site that moves as neither cannot be rebuilt."""
        kinds, unfit = {}, []
        for site, seen in self.read.items():
            first = seen[0][1]
            if all(r == first for _, r in seen):
                continue
            if any(r is None for _, r in seen):
                unfit.append(f"the constant read by {self.reader(site)} is not read alike in every trace")
            elif first.values is not None and all(r.shape == first.shape and r.values is not None for _, r in seen):
                kinds[site] = "vector"
            elif first.family is not None and all(r.family == first.family and r.dtype == first.dtype
                                                  and len(r.shape) == len(first.shape) for _, r in seen):
                kinds[site] = "table"
            else:
                unfit.append(f"the constant read by {self.reader(site)} moves between traces as neither a size "
                             "vector nor a table its shape determines (uniform, or an arange) does")
        return kinds, unfit

    def reader(self, site: Site) -> str:
        op, name = self.structure[site[0]]
        return f"{op} node '{name or site[0]}' (input {site[1]})"

    def sizes_of(self, dim: str) -> set[int]:
        """The sizes of `dim` traced already, or not to trace (the others at export)."""
        known = {sizes[dim] for seen in self.read.values() for sizes, _ in seen}
        avoided = {sizes[dim] for sizes in self.avoid if sizes == {**self.base, dim: sizes[dim]}}
        return known | avoided | set(self.outside[dim])

    def observations(self, site: Site, kind: str, index: int) -> list[Observation]:
        return [(sizes, reading.numbers(kind)[index]) for sizes, reading in self.read[site]]


def _settle(traces: _Traces, kinds: dict[Site, str], base: Sizes
            ) -> tuple[dict[Site, tuple[str, Reading, list[Fit]]] | None, list[str]]:
    """One fit per number of each moving site, tracing again where several remain; None and why, when a number
    cannot be fitted."""
    notes: dict[str, str] = {}  # dim -> how its ties were settled
    decided: dict[Number, Fit] = {}
    while True:
        chosen: dict[Site, tuple[str, Reading, list[Fit]]] = {}
        tie: tuple[Number, list[Fit]] | None = None
        for site, kind in sorted(kinds.items()):
            reading, row = traces.read[site][0][1], []
            for index, value in enumerate(reading.numbers(kind)):
                observations = traces.observations(site, kind, index)
                if len({v for _, v in observations}) == 1:
                    row.append(Fit((), 0, value))  # the model's own number
                    continue
                found = [decided[site, index]] if (site, index) in decided else fits(observations, base)
                if not found:
                    what = "element" if kind == "vector" else "dim"
                    return None, [f"the constant read by {traces.reader(site)}, {what} {index}, moves as no size "
                                  f"expression does: {_shown(observations)}"]
                if len(found) > 1 and tie is None:
                    tie = (site, index), found
                row.append(found[0])
            chosen[site] = kind, reading, row
        if tie is None:
            return chosen, list(notes.values())
        key, candidates = tie
        dim = _dim_to_split(candidates, base)
        tried = [s for s in traces.outside[dim] if _disagree(candidates, {**base, dim: s})]
        size = splitting_size(candidates, base, traces.sizes_of(dim), dim)
        if size is None or len(tried) >= MAX_OUTSIDE:
            # every size where they disagree that was traced took another path: there the graph is not the module
            decided[key] = candidates[0]
            notes.setdefault(dim, f"the fits along {dim} differ only at sizes where the module traces another graph "
                                  f"({dim} = {', '.join(map(str, tried)) or 'none within reach'}): kept the simplest, "
                                  f"as {candidates[0]} over {candidates[1]}")
            continue
        if traces.spent():
            return None, [f"{len(candidates)} size expressions still fit after {traces.made} traces (at most "
                          f"{MAX_TRACES}, in {MAX_SECONDS:.0f} s): {', '.join(map(str, candidates[:4]))}"]
        traces.at({**base, dim: size})


def _disagree(candidates: list[Fit], sizes: Sizes) -> bool:
    return len({c.at(sizes) for c in candidates}) > 1


def _dim_to_split(candidates: list[Fit], base: Sizes) -> str:
    """The first dim along which the candidates disagree (fits.fits keeps only candidates that do)."""
    return next((dim for dim in base if any(_disagree(candidates, {**base, dim: size})
                                            for size in range(1, REACH * base[dim] + 1))), next(iter(base)))


def _shown(observations: list[Observation]) -> str:
    return "; ".join(f"{dict(sizes)} -> {value}" for sizes, value in observations[:4])
