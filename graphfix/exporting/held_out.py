"""The check of refit's fits at traces no fit used: the sizes (`held_out_sizes`), and the traces that must show
every moving constant as its fit predicts and every other as at export (`held_out`).

    wrong, held = held_out(traces, chosen, base)   # refit's _Traces, its chosen fits, the export's sizes

The dims a fit reads are each checked at a list of sizes of their own; one trace moves them together, the
first dim's smaller sizes with the others' larger ones, where the input grows no more than at one dim's
farthest size (REACH times the export's). That checks each fit as one dim's trace would, with the others moved
as well, in half the traces of an image's height and width. Where such a trace leaves the graph's domain (a
module that takes square images only, or multiples of a patch), each of its dims is traced alone there instead,
and once two such traces more than those that kept the graph have left it, the dims are traced alone from then
on (MobileViT's patches: 1 size in 64 of two dims at once keeps its graph, 1 in 8 of one).
"""

from __future__ import annotations

import itertools
import math
import time

from graphfix.exporting.fit import REACH, Fit, Sizes
from graphfix.exporting.readings import Reading, Site, same_table

PERIOD = 16  # each dim a fit reads is checked at every size from one to PERIOD past its export size (a divisor
# of the family up to 16: a function of that dim that agrees with the fit there agrees on a whole period of it;
# its divisors 32 and 64, and a 'SAME' pad's period, its term's divisor times its stride: the spread sample's
# 2 * PERIOD sizes, a step apart that shares no factor with such a period, fall in each of its classes up to 32,
# in half of 64's)


def held_out(traces, chosen: dict[Site, tuple[str, Reading, list[Fit]]], base: Sizes
             ) -> tuple[str | None, list[Sizes]]:
    """Traces at sizes no fit used: each that keeps the graph must show every constant as the fits predict, and
    the others as at export. What went wrong, if anything (the time running out before every size was traced
    is wrong too), and the sizes checked."""
    held: list[Sizes] = []
    dims = {t.dim for _, _, fitted in chosen.values() for fit in fitted for t in fit.terms}
    products = {frozenset(t.dim for t in fit.terms) for _, _, fitted in chosen.values() for fit in fitted
                if len({t.dim for t in fit.terms}) > 1}
    kept = left = 0  # traces of dims moved together that kept the graph, and that left it
    for group in _moved_together(held_out_sizes(traces, base, dims, products), base):
        joint = {**base, **{d: sizes[d] for sizes in group for d in sizes if sizes[d] != base[d]}}
        tries = [(joint, False)] if len(group) > 1 and left <= kept + 1 and joint not in traces.avoid else []
        for sizes, alone in [*tries, *((sizes, True) for sizes in group)]:
            if time.monotonic() > traces.deadline:
                return f"the traces ran out of their {traces.seconds:.0f} s before the fits were checked", held
            found = traces.readings_at(sizes, record=alone)
            if found is None:
                left += not alone
                continue
            wrong = _wrong(traces, chosen, sizes, found)
            if wrong:
                return wrong, held
            held.append(sizes)
            kept += not alone
            if not alone:
                break
    for product in products:  # a product fitted one dim at a time holds only if checked with them all moved
        if not any(all(sizes[d] != base[d] for d in product) for sizes in held):
            return (f"a fit over {', '.join(sorted(product))} was fitted one dim at a time, and no size with them "
                    "all moved kept the graph to check it"), held
    return None, held


def _wrong(traces, chosen: dict[Site, tuple[str, Reading, list[Fit]]], sizes: Sizes, found: dict) -> str | None:
    """What the trace at `sizes` shows against the fits, if anything."""
    if traces.moved:
        return "the attributes of a node move between traces"
    for site, seen in traces.read.items():
        expected = _predicted(chosen[site], sizes) if site in chosen else seen[0][1]
        got = found.get(site)
        if site in chosen and got is not None:
            kind, reading, _ = chosen[site]
            got = got.numbers(kind) if kind == "vector" or same_table(reading, got) else None
        if got != expected:
            return (f"the fits fail at {sizes_text([sizes])}, a size no fit used: the constant read by "
                    f"{traces.reader(site)} is {_shown_reading(got)} there, not {_shown_reading(expected)}")
    return None


def _moved_together(candidates: list[Sizes], base: Sizes) -> list[list[Sizes]]:
    """`candidates` grouped to be traced at once: of the sizes that move one dim each, the first dim's k-th
    smallest with each other dim's k-th largest, in the first dim's order, where together they grow the input no
    more than one dim's farthest size does (REACH times); the others alone."""
    def moved(sizes: Sizes) -> list[str]:
        return [d for d in base if sizes[d] != base[d]]

    lists: dict[str, list[Sizes]] = {}
    for sizes in candidates:
        if len(moved(sizes)) == 1:
            lists.setdefault(moved(sizes)[0], []).append(sizes)
    groups = [[sizes] for sizes in candidates if len(moved(sizes)) != 1]
    if not lists:
        return groups
    (dim, first), *others = lists.items()
    rank = {id(sizes): k for k, sizes in enumerate(sorted(first, key=lambda s: s[dim]))}
    partners = [sorted(own, key=lambda s, d=d: -s[d]) for d, own in others]
    for sizes in first:
        k = rank[id(sizes)]
        group = [sizes, *(p[k] for p in partners if k < len(p))]
        grows = math.prod(s[d] / max(base[d], 1) for s in group for d in moved(s))
        groups += [group] if grows <= REACH else [[s] for s in group]
    return groups + [[sizes] for p in partners for sizes in p[len(first):]]


def held_out_sizes(traces, base: Sizes, dims: set[str], products: set[frozenset[str]]) -> list[Sizes]:
    """The sizes the fits are checked at, none traced yet: all dims at once one past export, at one, one before,
    half again, half less, a quarter again (or the nearest value above no trace had); the dims of each product
    fit together at each pair of their next three untraced sizes (a module may take only some of them: `B * T`
    a multiple of 4); then each dim a fit reads alone at every size from one to PERIOD past its export size that
    no trace had, at one, and at every size up to REACH times its export size where that is 4 * PERIOD sizes at
    most, else at up to 2 * PERIOD sizes spread over them (a function outside the family, `(3 * T) // 40`, may
    agree with a fit near the export size and not farther), a step apart that shares no factor with 2 to 13:
    they fall in every class of sizes modulo a stride or a patch, not in one (a step of 8 from 3 put every one of
    MobileViT's at a height its 8-pixel patches do not take, where the module traces another graph and checks
    nothing)."""
    def known(dim: str) -> set[int]:
        return traces.valid(dim) | set(traces.outside[dim]) | traces.avoided(dim)

    def unknown(dim: str, export: int, step: int) -> int:
        return next((v for v in range(export + step, export + step + 8) if v >= 1 and v not in known(dim)), export)

    joint = (lambda e: 1, lambda e: 1 - e, lambda e: -1, lambda e: e // 2, lambda e: -(e // 2), lambda e: e // 4)
    candidates = [{d: unknown(d, e, step(e)) for d, e in base.items()} for step in joint]
    for product in sorted(products, key=sorted):
        nearest = {d: [v for v in range(base[d] + 1, base[d] + PERIOD + 1) if v not in known(d)][:3] for d in product}
        candidates += [{**base, **dict(zip(sorted(product), values, strict=True))}
                       for values in itertools.product(*(nearest[d] for d in sorted(product)))]
    for dim in sorted(dims):
        export = base[dim]
        top = REACH * export
        spread = range(1, top + 1) if top <= 4 * PERIOD else range(3, top + 1, coprime_step(top // (2 * PERIOD)))
        candidates += [{**base, dim: size} for size in dict.fromkeys([*range(export + 1, export + PERIOD + 1), 1,
                                                                       *spread])
                       if size not in known(dim)]
    kept: list[Sizes] = []
    for sizes in candidates:
        if sizes not in kept and sizes != dict(base) and sizes not in traces.avoid:
            kept.append(sizes)
    return kept


def coprime_step(step: int) -> int:
    """The least step >= `step` that shares no prime factor with 2, 3, 5, 7, 11 or 13 (a fit's divisors, up to
    16, and their products with a 'SAME' pad's stride)."""
    while math.gcd(step, 2 * 3 * 5 * 7 * 11 * 13) != 1:
        step += 1
    return step


def _predicted(chosen: tuple[str, Reading, list[Fit]], sizes: Sizes) -> tuple[int, ...]:
    return tuple(fit.at(sizes) for fit in chosen[2])


def _shown_reading(value) -> str:
    if value is None:
        return "not read"
    if isinstance(value, Reading):
        if value.values is not None:
            return str(list(value.values))
        family = f"{value.family[0]} {', '.join(map(str, value.family[1:]))}" if value.family else "a table"
        return f"{family} of shape {list(value.shape)}"
    return str(list(value))


def sizes_text(all_sizes: list[Sizes]) -> str:
    return "; ".join(", ".join(f"{d}={v}" for d, v in sizes.items()) for sizes in all_sizes)
