"""graphfix.analysis.hypotheses: the expressions a baked value may stand for, and what the graph's constraints leave.

Each case is a constraint the size analysis records for a small PyTorch idiom traced at one size; the expected
survivors are what PyTorch's own code allows (worked out by hand in the comments)."""

from __future__ import annotations

import numpy as np
import pytest
import sympy

from graphfix.analysis.bands import Complement, Structure, structures
from graphfix.analysis.hypotheses import (
    PAD,
    Multiple,
    Requirement,
    Varies,
    determine,
    equivalent,
    evaluator,
    hole,
    show,
    size_hypotheses,
)

HOLE = hole()

T = sympy.Symbol("T", integer=True, positive=True)
B = sympy.Symbol("B", integer=True, positive=True)
S = sympy.Symbol("S", integer=True, positive=True)
OTHER = sympy.Symbol("other", integer=True)


def texts(hypotheses) -> list[str]:
    return [str(h) for h in hypotheses]


def test_the_family_of_a_size_holds_every_form_equal_to_it_at_export():
    found = texts(size_hypotheses(4, {T: 8}))
    assert found[:2] == ["4", "T - 4"]  # the constant itself is a hypothesis: a size of the model
    assert {"T // 2", "ceil(T / 2)", "min(4, T)"} <= set(found)
    assert "2*T" in texts(size_hypotheses(16, {T: 8})) and "B*T" in texts(size_hypotheses(6, {T: 3, B: 2}))
    assert texts(size_hypotheses(7, {T: 7}))[0] == "T"  # the dim itself is the cheapest
    # a pad amount may also round a length up: (k - T % k) % k for each k giving the value
    pads = texts(size_hypotheses(1, {T: 7}, families=PAD))
    assert "(4 - T % 4) % 4" in pads and "(8 - T % 8) % 8" in pads
    assert not any("%" in t for t in texts(size_hypotheses(1, {T: 7})))  # not a shape entry's


def test_every_hypothesis_equals_the_value_at_export():
    for value, export in ((4, {T: 8}), (12, {T: 6}), (3, {T: 9, S: 4}), (1, {T: 7})):
        for h in size_hypotheses(value, export, families=PAD):
            assert evaluator(h.expr)(export) == value, (h, value)


def test_a_neighbouring_slice_determines_the_end():
    # x[:, 1:] - x[:, :int(T) - 1] at T=8: Min(T, end) must equal T - 1; only T - 1 does beyond T=8
    found = determine({HOLE: size_hypotheses(7, {T: 8})}, [Requirement(sympy.Min(T, HOLE), T - 1, "Sub")], {T: 8})
    assert found.determined and str(found.chosen()) == "T - 1"
    assert any("export size only" in why for _, why in found.killed)  # the constant 7, min(T, 7)...


def test_halves_with_both_bounds_baked_are_not_determined():
    # h = int(T) // 2; x[:, :h] * x[:, h:] at T=8: the start 4 of x[:, 4:] may be baked too (a second hole)
    space = {HOLE: size_hypotheses(4, {T: 8}), OTHER: size_hypotheses(4, {T: 8})}
    found = determine(space, [Requirement(sympy.Min(T, HOLE), T - OTHER, "Mul", holes=(HOLE, OTHER))], {T: 8})
    assert not found.determined
    assert {"T - 4", "T // 2", "ceil(T / 2)"} <= set(texts(found.alternatives()))
    assert "T" not in texts(found.alternatives()) and "2*T" not in texts(found.alternatives())


def test_an_element_count_fits_two_entries_and_a_declared_output_pins_one():
    # x [B, 4T] reshaped to [B, 2, 12] at T=6 (reshape(B, int(T) // 3, 12)): 2 = T // 3 (T a multiple of 3, where
    # PyTorch runs too) or 12 = 2*T; the output declared [B, G] says the 2 varies
    second = sympy.Symbol("second", integer=True)
    space = {HOLE: size_hypotheses(2, {T: 6}), second: size_hypotheses(12, {T: 6})}
    count = Requirement(4 * B * T, B * HOLE * second, "the element count", holes=(HOLE, second))
    both = determine(space, [count], {T: 6})
    pairs = {(str(s[HOLE]), str(s[second])) for s in both.survivors}
    assert pairs == {("2", "2*T"), ("T // 3", "12")}
    pinned = determine(space, [count, Varies("output G is declared dynamic")], {T: 6})
    assert pinned.determined and str(pinned.chosen()) == "T // 3"
    assert "min(2, T)" not in texts(pinned.alternatives())  # fixed past T=2: it stays fixed as well


def test_floor_and_ceil_that_agree_wherever_the_graph_runs_are_one_hypothesis():
    # 4T = 12 * h: T // 3 and ceil(T / 3) both run on multiples of 3 only, and agree there
    found = determine({HOLE: size_hypotheses(2, {T: 6})}, [Requirement(4 * T, 12 * HOLE, "count")], {T: 6})
    assert found.determined and str(found.chosen()) == "T // 3"


def test_a_pad_must_make_every_length_whole_chunks():
    # (4 - int(T) % 4) % 4 at T=7 is 1; rounding up to 8 gives 1 there as well and also makes every length whole
    # chunks of 4, and so do `4 - T % 4` and `8 - T % 8`, which pad a whole chunk where T is a multiple already
    at7 = determine({HOLE: size_hypotheses(1, {T: 7}, families=PAD)}, [Multiple(T + HOLE, 4, "chunks")], {T: 7})
    assert texts(at7.alternatives()) == ["(4 - T % 4) % 4", "(8 - T % 8) % 8", "4 - T % 4", "8 - T % 8"]
    at3 = determine({HOLE: size_hypotheses(1, {T: 3}, families=PAD)}, [Multiple(T + HOLE, 4, "chunks")], {T: 3})
    assert texts(at3.alternatives()) == ["(4 - T % 4) % 4", "4 - T % 4"]
    # only at a multiple of 4 do the two part: a pad of 4 there is the whole chunk, and no round-up gives it
    at8 = determine({HOLE: size_hypotheses(4, {T: 8}, families=PAD)}, [Multiple(T + HOLE, 4, "chunks")], {T: 8})
    assert "4 - T % 4" in texts(at8.alternatives()) and "(4 - T % 4) % 4" not in texts(at8.alternatives())


def test_a_batch_whose_export_size_is_unknown_is_sampled():
    # [T, B, 16] -> [7, 4B, 4] at T=7: entry 0 is T whatever B is; entry 2 (4) fits no expression
    count = Requirement(16 * B * T, HOLE * 4 * B * 4, "count")
    assert str(determine({HOLE: size_hypotheses(7, {T: 7})}, [count], {T: 7}).chosen()) == "T"
    other = Requirement(16 * B * T, 7 * 4 * B * HOLE, "count")
    assert determine({HOLE: size_hypotheses(4, {T: 7})}, [other], {T: 7}).survivors == []


def test_evaluation_is_exact_and_equivalence_is_by_value():
    assert evaluator(sympy.floor(T / 3))({T: 9}) == 3 and evaluator(sympy.ceiling(T / 3))({T: 10}) == 4
    assert evaluator(sympy.Mod(-T, 4))({T: 7}) == 1 and evaluator(sympy.Min(T, 4))({T: 9}) == 4
    assert equivalent(sympy.Mod(4 - sympy.Mod(T, 4), 4), sympy.Mod(-T, 4))
    assert not equivalent(sympy.floor(T / 3), sympy.ceiling(T / 3))
    with pytest.raises(ValueError):
        evaluator(sympy.sin(T))({T: 1})
    assert show(sympy.floor(T / 2)) == "T // 2" and show(sympy.Mod(-T, 8)) in ("(8 - T % 8) % 8", "(-T) % 8")


def test_a_triangle_reaching_the_corner_is_also_every_wide_window():
    t = 4
    tril = np.tril(np.ones((t, t), bool))
    found = structures(tril, rows_grow=True, cols_grow=True)
    assert str(found[0]) == "tril (k=0)" and len(found) > 1
    assert all(s.family == "band" and s.lo <= -(t - 1) for s in found[1:])  # windows of width >= 4


def test_a_visible_band_and_an_eye_are_determined():
    i = np.arange(7)
    window = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < 3)
    assert [str(s) for s in structures(window, True, True)] == ["band -2 <= j - i <= 0"]
    assert [str(s) for s in structures(np.eye(5, dtype=bool), True, True)] == ["eye (k=0)"]


def test_a_side_that_follows_no_size_hides_no_edge():
    # tril(ones(T, 6)) traced at T=7: the columns are fixed, so only the rows' edge is hidden
    mask = np.tril(np.ones((7, 6), bool))
    grown = [s.holds(12, 6) for s in structures(mask, rows_grow=True, cols_grow=False)]
    assert len(grown) > 1 and not np.array_equal(grown[0], grown[1])
    assert str(Complement(Structure(1, None))) == "not triu (k=1)"
