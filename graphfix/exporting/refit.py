"""Constants that move between traces, rebuilt from the input's shape: what the graph alone cannot settle (#22).

A TorchScript export bakes every Python number the module computed from a size: MobileViT's patch counts
`math.ceil(H / p)`, `B * C * n_h`. From the graph these are not determined: a block of the opposite design (a fixed
grid of patches whose size follows the input) leaves the same graph, constants and all
(tests/frontends/test_patch_grid_ambiguity.py), so `graphfix repair` refuses both. The module settles it: traced
again at other sizes, the constants that follow a size move and the model's own stay. This module makes those
traces, one dim at a time, and fits each moving number (graphfix.exporting.fit): a size vector's values, or the
shape of a table the trace filled at its size (graphfix.exporting.readings). Where several fits remain it traces
again where they disagree (fit.next_split). The fits are then checked at traces no fit used
(graphfix.exporting.held_out), and rebuilt from `Shape` of the input that carries each dim
(graphfix.exporting.rebuild); `graphfix.export` proves the result against the module at sizes no trace used.

Only what every trace agrees on is rebuilt: the traces must keep the graph's structure (the same ops, in order;
a trace that takes another branch is outside the graph's domain and says nothing), and a moving constant is a size
vector of one length in all traces, or a table of one family. Fits that still disagree once every class of sizes
where they do has left the graph's domain, above and below the export size, differ only where the graph does not
hold: the simplest is kept, and the note says so.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import onnx

from graphfix.exporting.fit import Fit, Observation, Sizes, fits, next_split, sizes_of
from graphfix.exporting.held_out import held_out, sizes_text
from graphfix.exporting.readings import Reading, Site, attributes, readings, same_table, structure
from graphfix.exporting.rebuild import rebuild

MAX_TRACES = 48  # traces beyond the first and the parity traces, in all: each is one export of the module
MAX_SECONDS = 120.0  # and the time they may take together: none is started after it
FACTORS = (4, 5)  # each dim traced at these multiples of its export size (2x and 3x are the proof's sizes)
PARITY_DEPTH = 5  # and past it where the lengths of the first 5 stride-2 layers change parity (see `_parity_sizes`)

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
        for size in (*(export * factor for factor in FACTORS), *_parity_sizes(traces, dim, export)):
            traces.at({**base, dim: size})
    kinds, unfit = traces.kinds()
    if unfit:
        return Refitted(None, notes=unfit)
    if not kinds:
        kept_graph = any(len(seen) > 1 for seen in traces.read.values())
        return Refitted(None, notes=["no constant moves between the traces at other sizes" if kept_graph else
                                     "no trace at another size kept the graph (the module raised or took another "
                                     f"path at each of {traces.made})"])
    chosen, notes = _settle(traces, kinds, base)
    if chosen is None:
        return Refitted(None, notes=notes)
    wrong, held = held_out(traces, chosen, base)
    if wrong:
        return Refitted(None, notes=[*notes, wrong])
    shown = sizes_text(held[:6]) + (f"; and {len(held) - 6} more" if len(held) > 6 else "")
    notes.append(f"the fits held at {len(held)} size(s) no fit used" + (f" ({shown})" if held else
                 ": none of those tried kept the graph; the proof's sizes alone check them"))
    rebuilt = [f"{traces.reader(site)}: {'' if kind == 'vector' else reading.family[0] + ' of shape '}"
               f"[{', '.join(map(str, fitted))}]" for site, (kind, reading, fitted) in sorted(chosen.items())]
    return Refitted(rebuild(model, chosen, dims), rebuilt, notes)


def _parity_sizes(traces: _Traces, dim: str, export: int) -> list[int]:
    """Sizes at which the length after each of PARITY_DEPTH stride-2 layers (`ceil(n / 2**i)`) has the other
    parity than at `export`: `export` plus an odd multiple of 2**i, the first the proof does not take (a stride-2
    front end's proof takes one past it itself, half its stride). A 'SAME' pad moves with that parity, and the
    multiples of an even export size keep every one of them."""
    return [next(s for s in itertools.count(export + 2**i, 2 ** (i + 1)) if {**traces.base, dim: s} not in traces.avoid)
            for i in range(PARITY_DEPTH)]


class _Traces:
    """The traces made so far: each site's reading in each trace that kept the graph's structure."""

    def __init__(self, trace: Trace, model: onnx.ModelProto, base: Sizes, avoid: Sequence[Sizes]):
        self.trace, self.structure, self.attributes, self.base = trace, structure(model), attributes(model), base
        self.avoid = [dict(sizes) for sizes in avoid]
        self.moved: set[int] = set()  # nodes whose attributes moved between traces
        self.read: dict[Site, list[tuple[Sizes, Reading | None]]] = {
            site: [(base, reading)] for site, reading in readings(model).items()}
        self.outside: dict[str, list[int]] = {dim: [] for dim in base}
        self.made, self.seconds = 0, MAX_SECONDS
        self.deadline = time.monotonic() + MAX_SECONDS

    def spent(self) -> bool:
        return self.made >= MAX_TRACES + PARITY_DEPTH * len(self.base) or time.monotonic() > self.deadline

    def at(self, sizes: Sizes) -> bool:
        """Trace at `sizes`; whether the trace kept the graph (its readings are then recorded)."""
        if self.spent() or dict(sizes) in self.avoid:
            return False
        self.made += 1
        found = self.readings_at(sizes)
        if found is None:
            return False
        for site, seen in self.read.items():
            seen.append((sizes, found.get(site)))
        return True

    def readings_at(self, sizes: Sizes, record: bool = True) -> dict[Site, Reading] | None:
        """The readings of a trace at `sizes`, or None where the trace left the graph's structure (recorded where
        `record`: a trace of several dims moved does not say which of them left it)."""
        traced = self.trace(sizes)
        if traced is None or structure(traced) != self.structure:
            for dim in self.base if record else ():
                if sizes[dim] != self.base[dim]:
                    self.outside[dim].append(sizes[dim])
            return None
        self.moved |= {i for i, (a, b) in enumerate(zip(attributes(traced), self.attributes, strict=True)) if a != b}
        return readings(traced)

    def valid(self, dim: str) -> set[int]:
        """The sizes of `dim` at which a trace (the others at export) kept the graph, the export's among them."""
        return {sizes[dim] for seen in self.read.values() for sizes, _ in seen
                if sizes == {**self.base, dim: sizes[dim]}} | {self.base[dim]}

    def avoided(self, dim: str) -> set[int]:
        return {sizes[dim] for sizes in self.avoid if sizes == {**self.base, dim: sizes[dim]}}

    def kinds(self) -> tuple[dict[Site, str], list[str]]:
        """The sites that move, each a "vector" (its values move) or a "table" (its shape moves, its family
        stays); and why a site that moves as neither cannot be rebuilt."""
        kinds = {}
        unfit = [f"the attributes of {self.structure[i][0]} node '{self.structure[i][1] or i}' move between traces"
                 for i in sorted(self.moved)]
        for site, seen in self.read.items():
            first = seen[0][1]
            if all(r == first for _, r in seen):
                continue
            if any(r is None for _, r in seen):
                unfit.append(f"the constant read by {self.reader(site)} is not read alike in every trace")
            elif first.values is not None and all(r.shape == first.shape and r.values is not None for _, r in seen):
                kinds[site] = "vector"
            elif first.family is not None and all(same_table(first, r) and len(r.shape) == len(first.shape)
                                                  for _, r in seen):
                kinds[site] = "table"
            else:
                unfit.append(f"the constant read by {self.reader(site)} moves between traces as neither a size "
                             "vector nor a table its shape determines (uniform, or an arange) does")
        return kinds, unfit

    def reader(self, site: Site) -> str:
        op, name = self.structure[site[0]]
        return f"{op} node '{name or site[0]}' (input {site[1]})"

    def observations(self, site: Site, kind: str, index: int) -> list[Observation]:
        return [(sizes, reading.numbers(kind)[index]) for sizes, reading in self.read[site]]


def _settle(traces: _Traces, kinds: dict[Site, str], base: Sizes
            ) -> tuple[dict[Site, tuple[str, Reading, list[Fit]]] | None, list[str]]:
    """One fit per number of each moving site, tracing again where several remain; None and why, when a number
    cannot be fitted."""
    notes: dict[str, str] = {}  # dim -> how its ties were settled
    decided: dict[Number, Fit] = {}
    known = _Fits(base)
    while True:
        if time.monotonic() > traces.deadline:
            return None, [f"the traces and their fits ran out of their {MAX_SECONDS:.0f} s after {traces.made} "
                          "traces"]
        chosen: dict[Site, tuple[str, Reading, list[Fit]]] = {}
        tie: tuple[Number, list[Fit]] | None = None
        for site, kind in sorted(kinds.items()):
            reading, row = traces.read[site][0][1], []
            for index, value in enumerate(reading.numbers(kind)):
                observations = traces.observations(site, kind, index)
                if len({v for _, v in observations}) == 1:
                    row.append(Fit((), 0, value))  # the model's own number
                    continue
                if (site, index) in decided and any(decided[site, index].at(s) != v for s, v in observations):
                    del decided[site, index]  # a trace made for another tie contradicts the simplest
                found = [decided[site, index]] if (site, index) in decided else known.of((site, index), observations)
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
        splits = ((d, next_split(candidates, base, d, traces.valid(d), traces.outside[d], traces.avoided(d)))
                  for d in _dims_to_split(candidates, base))
        dim, size = next(((d, s) for d, s in splits if s is not None), (_dims_to_split(candidates, base)[0], None))
        if size is None:
            # each class of sizes where they disagree had a size the module traces another way: there the graph
            # is not the module, whichever fit is kept
            decided[key] = candidates[0]
            outside = sorted(s for s in traces.outside[dim] if _disagree(candidates, {**base, dim: s}))
            notes.setdefault(dim, f"the fits along {dim} differ only where the module traces another graph "
                                  f"({dim} = {', '.join(map(str, outside)) or 'the proof sizes'}): kept the "
                                  f"simplest, {candidates[0]} over {candidates[1]}")
            continue
        if traces.spent():
            return None, [f"{len(candidates)} size expressions still fit after {traces.made} traces (at most "
                          f"{MAX_TRACES} past the parity traces, in {MAX_SECONDS:.0f} s): "
                          f"{', '.join(map(str, candidates[:4]))}"]
        traces.at({**base, dim: size})


class _Fits:
    """Each number's fits so far: a trace added since only strikes the ones it contradicts (the family is fixed,
    so the fits of more observations are among those of fewer); searched again only if it strikes them all."""

    def __init__(self, base: Sizes):
        self.base, self.found = base, {}

    def of(self, number: Number, observations: list[Observation]) -> list[Fit]:
        seen, found = self.found.get(number, (0, None))
        if found is not None:
            found = [f for f in found if all(f.at(s) == v for s, v in observations[seen:])]
        if not found:
            found = fits(observations, self.base)
        self.found[number] = len(observations), found
        return found


def _disagree(candidates: list[Fit], sizes: Sizes) -> bool:
    return len({c.at(sizes) for c in candidates}) > 1


def _dims_to_split(candidates: list[Fit], base: Sizes) -> list[str]:
    """The dims along which the candidates disagree (each dim alone, the others at export); fits.fits keeps only
    candidates that do along one at least."""
    return [dim for dim in base if any(_disagree(candidates, {**base, dim: size}) for size in sizes_of(base[dim]))] \
        or [next(iter(base))]


def _shown(observations: list[Observation]) -> str:
    return "; ".join(f"{dict(sizes)} -> {value}" for sizes, value in observations[:4])
