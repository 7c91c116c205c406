"""graphfix.exporting.fit: the size expression a traced constant is, from its values at several sizes."""

from __future__ import annotations

import math

import pytest

from graphfix.exporting.fit import Fit, Term, fits, splitting_size

BASE = {"B": 2, "H": 32, "W": 48}


def observed(function, factors=(4, 5), base=BASE):
    """The value at export and with each dim alone at `factors` times its export size (refit's first traces)."""
    points = [dict(base)] + [{**base, dim: base[dim] * f} for dim in base for f in factors]
    return [(sizes, function(sizes)) for sizes in points]


@pytest.mark.parametrize("function, expected", [
    (lambda s: s["H"], "H"),
    (lambda s: (s["H"] - 1) // 2 - 1, None),  # not in the family's reach from multiples alone: checked below
    (lambda s: s["B"] * 16 * math.ceil(s["H"] / 8), None),
    (lambda s: 3 * s["W"] + 2, "3 * W + 2"),
])
def test_the_function_behind_the_values_is_among_the_fits(function, expected):
    found = fits(observed(function), BASE)
    assert found, "no fit"
    for fit in found:  # every fit reproduces every observation
        assert all(fit.at(sizes) == value for sizes, value in observed(function))
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
        size = splitting_size(found, base, known={s["H"] for s, _ in observations}, dim="H")
        assert size is not None and len({f.at({"H": size}) for f in found}) > 1
        observations.append(({"H": size}, function({"H": size})))
        found = fits(observations, base)
    assert [str(f) for f in found] == ["ceil(H / 3)"]
    assert len(observations) <= 5 + 4


def test_the_splitting_size_tries_the_coarsest_multiples_of_the_export_size_first():
    """Between H // 8 and 2 * (H // 16) (equal at multiples of 16), 40 splits them: a multiple of 8, inside a
    patch model's domain, tried before the sizes between (33 .. 39) that a patch model rejects."""
    candidates = [Fit((Term("H", 8),)), Fit((Term("H", 16),), 2)]
    assert splitting_size(candidates, {"H": 32}, known=(), dim="H") == 40


def test_a_product_of_dims_is_fitted_per_dim():
    function = lambda s: s["B"] * 16 * math.ceil(s["H"] / 8)  # noqa: E731  MobileViT's B * C * n_h
    found = fits(observed(function), BASE)
    assert all(set(t.dim for t in f.terms) == {"B", "H"} for f in found)
    assert any(f.at({"B": 3, "H": 40, "W": 48}) == function({"B": 3, "H": 40}) for f in found)


def test_fits_are_shown_as_expressions():
    assert str(Fit((Term("T", 2, ceil=True),), 1, -1)) == "ceil(T / 2) - 1"
    assert str(Fit((Term("B"), Term("H", 8)), 16)) == "16 * B * (H // 8)"
    assert str(Fit((), 0, 7)) == "7"
