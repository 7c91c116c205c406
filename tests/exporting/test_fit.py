"""graphfix.exporting.fit: the size expression a traced constant is, from its values at several sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graphfix.exporting.fit import Fit, Term, fits, next_split

BASE = {"B": 2, "H": 32, "W": 48}


def observed(function, factors=(4, 5), base=BASE):
    """The value at export and with each dim alone at `factors` times its export size (refit's first traces)."""
    points = [dict(base)] + [{**base, dim: base[dim] * f} for dim in base for f in factors]
    return [(sizes, function(sizes)) for sizes in points]


@pytest.mark.parametrize("function, expected", [
    (lambda s: s["H"], "H"),
    (lambda s: (s["H"] - 1) // 2 - 1, None),  # a conv subsampling's length: among the fits, named otherwise
    (lambda s: s["B"] * 16 * math.ceil(s["H"] / 8), None),
    (lambda s: 3 * s["W"] + 2, "3 * W + 2"),
])
def test_the_function_behind_the_values_is_among_the_fits(function, expected):
    found = fits(observed(function), BASE)
    grid = [{**BASE, dim: size} for dim in BASE for size in range(1, 8 * BASE[dim] + 1)]
    assert any(all(fit.at(sizes) == function(sizes) for sizes in grid) for fit in found), [str(f) for f in found]
    if expected is not None:
        assert str(found[0]) == expected


def test_a_constant_that_does_not_move_has_no_fit():
    assert fits(observed(lambda s: 16), BASE) == []


def test_values_no_expression_gives_have_no_fit():
    values = iter([3, 17, 5, 99, 4, 2, 11])  # a maximum of random data, say: it moves, but as no size does
    assert fits([(sizes, next(values)) for sizes, _ in observed(lambda s: 0)], BASE) == []


def test_floor_and_ceil_stay_two_fits_until_sizes_split_them():
    """Traced at multiples of 9 only, ceil(H / 3) and H // 3 (and more) fit; traces where they disagree, as refit
    makes them, leave the one the module computes."""
    function = lambda s: math.ceil(s["H"] / 3)  # noqa: E731
    base = {"H": 9}
    observations = observed(function, base=base)
    found = fits(observations, base)
    assert {str(f) for f in found} >= {"H // 3", "ceil(H / 3)"}
    while len(found) > 1:
        size = next_split(found, base, "H", valid={s["H"] for s, _ in observations}, outside=())
        assert size is not None and len({f.at({"H": size}) for f in found}) > 1
        observations.append(({"H": size}, function({"H": size})))
        found = fits(observations, base)
    assert [str(f) for f in found] == ["ceil(H / 3)"]
    assert len(observations) <= 5 + 4


def test_the_next_split_tries_the_coarsest_class_of_sizes_first():
    """Between H // 8 and 2 * (H // 16) (equal at multiples of 16), 40 splits them: a multiple of 8, inside a
    patch model's domain, tried before the sizes between (33 .. 39) that a patch model rejects."""
    candidates = [Fit((Term("H", 8),)), Fit((Term("H", 16),), 2)]
    assert next_split(candidates, {"H": 32}, "H", valid={32}, outside=()) == 40


def test_each_class_of_sizes_is_tried_before_a_tie_counts_as_outside_the_domain():
    """ceil(T / 3) and T // 3 at a module that takes even lengths only (traced at 6, 24 and 30): the odd sizes
    where they disagree leave the graph, but an even one (8) tells them apart, so it is tried; only when every
    class has left the graph (MobileViT's floor and ceil of H / 8, which agree at every multiple of 8) is there
    nothing more to try."""
    candidates = [Fit((Term("T", 3),)), Fit((Term("T", 3, 2),))]
    assert next_split(candidates, {"T": 6}, "T", valid={6, 24, 30}, outside={7, 9, 15, 21}) == 8
    patches = [Fit((Term("H", 8),)), Fit((Term("H", 8, 7),))]
    tried = []
    while (size := next_split(patches, {"H": 32}, "H", valid={32, 128, 160}, outside=tried)) is not None:
        assert size % 8, size  # at every multiple of 8 the two agree: nothing to learn there
        tried.append(size)
    assert sorted({math.gcd(size, 32) for size in tried}) == [1, 2, 4]  # one size per class, then none left


def test_a_product_of_dims_is_fitted_per_dim():
    function = lambda s: s["B"] * 16 * math.ceil(s["H"] / 8)  # noqa: E731  MobileViT's B * C * n_h
    found = fits(observed(function), BASE)
    assert all(set(t.dim for t in f.terms) == {"B", "H"} for f in found)
    assert any(f.at({"B": 3, "H": 40, "W": 48}) == function({"B": 3, "H": 40}) for f in found)


def test_fits_are_shown_as_expressions():
    assert str(Fit((Term("T", 2, 1),), 1, -1)) == "ceil(T / 2) - 1"
    assert str(Fit((Term("T", 3),), 3, 2)) == "3 * (T // 3) + 2"
    assert str(Fit((Term("B"), Term("H", 8)), 16)) == "16 * B * (H // 8)"
    assert str(Fit((), 0, 7)) == "7"


@pytest.mark.parametrize("fit", [
    Fit((Term("H", 8, 7),), 3, -2),
    Fit((Term("B"), Term("H", 8, 7), Term("W", 4)), 16),
    Fit((Term("B"), Term("H"), Term("W")), 1 << 40, 5),  # past int64 on the grid: Python's integers
], ids=str)
def test_fits_are_told_apart_by_their_exact_values_on_the_grid(fit):
    """The grid `fits` tells fits apart on is computed in arrays: its numbers are Fit.at's, past int64 too."""
    from graphfix.exporting.fit import _values_on, sizes_of

    base = {"B": 2, "H": 32, "W": 4800}
    grid = {dim: np.array(sizes_of(export), dtype=np.int64) for dim, export in base.items()}
    assert _values_on(fit, base, grid) == tuple(fit.at({**base, dim: int(size)})
                                                for dim, sizes in grid.items() for size in sizes)
