"""graphfix.analysis.structured: masks and table prefixes recognised from a constant's values alone."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from graphfix.analysis.structured import band_pattern, table_prefix

T = 5
LAST_TWO = [0, 1]


@pytest.mark.parametrize("value,kind,k,inside,outside", [
    (np.tril(np.ones((T, T), np.float32)), "tril", 0, 1.0, 0.0),
    (np.triu(np.full((T, T), -np.inf, np.float32), 1), "triu", 1, -np.inf, 0.0),
    (np.triu(np.ones((T, T), bool), 1), "triu", 1, True, False),
    (np.tril(np.ones((T, T + 2), np.int64), 2), "tril", 2, 1, 0),  # [T, S]
    (np.eye(T, dtype=np.float32), "eye", 0, 1.0, 0.0),
    (np.eye(T, T, -1, dtype=np.float32), "eye", -1, 1.0, 0.0),
], ids=["tril-ones", "triu-minus-inf", "triu-bool", "tril-rectangular", "eye", "eye-below"])
def test_band_is_recognised_with_its_offset_and_values(value, kind, k, inside, outside):
    band = band_pattern(value, LAST_TWO)
    assert not isinstance(band, str), band
    assert (band.kind, band.k, band.inside.item(), band.outside.item()) == (kind, k, inside, outside)
    rows, cols = value.shape
    np.testing.assert_array_equal(np.where(band.holds(rows, cols), band.inside, band.outside), value)


@pytest.mark.parametrize("value,axes,others", [
    (np.tril(np.ones((T, T), np.float32)), LAST_TWO, "sliding window of any width >= 5"),
    (np.triu(np.full((T, T), -np.inf, np.float32), 1), LAST_TWO, "sliding window of any width >= 5"),
    (np.tril(np.ones((T, 8), np.float32)), [0], "sliding window of any width >= 5"),
    (np.array([[1.0, 0.0]], np.float32), [1], "window of any width >= 1"),  # one row: eye, tril, ... alike
], ids=["tril", "additive-triu", "slots", "one-row"])
def test_a_mask_that_reaches_the_corner_along_a_size_names_the_windows_it_may_be(value, axes, others):
    """`tril(ones(int(T), int(T)))` traced at T=5 is also every sliding window wider than 4: not determined."""
    band = band_pattern(value, axes)
    assert not isinstance(band, str) and any(others in text for text in band.others), band


@pytest.mark.parametrize("value,lo,hi", [
    (np.eye(T, dtype=np.float32), 0, 0),
    ((np.tril(np.ones((12, 12))) - np.tril(np.ones((12, 12)), -4)).astype(bool), -3, 0),  # a window of 4, at T=12
    (np.tril(np.ones((T, 8), np.float32), -1) - np.tril(np.ones((T, 8), np.float32), -3), -2, -1),
], ids=["eye", "sliding-window", "window-below-diagonal"])
def test_a_mask_with_every_edge_inside_the_matrix_is_determined(value, lo, hi):
    band = band_pattern(value, [0, 1])
    assert not isinstance(band, str) and (band.lo, band.hi, band.others) == (lo, hi, ())
    rows, cols = value.shape
    bigger = np.where(band.holds(rows + 5, cols + 5), band.inside, band.outside)
    offsets = np.arange(cols + 5)[None, :] - np.arange(rows + 5)[:, None]
    np.testing.assert_array_equal(bigger == band.inside, (offsets >= lo) & (offsets <= hi))


@pytest.mark.parametrize("value", [
    np.array([[0.3, -1.2]], np.float32),  # a learned gain: two values, one row
    np.tril(np.ones((T, T)), 0) * 3 + 1,  # two values that are no mask's
    np.tril(np.full((T, T), 0.5)),
], ids=["learned-gain", "one-and-four", "half"])
def test_two_values_that_are_not_a_mask_are_weights(value):
    reason = band_pattern(value, LAST_TWO)
    assert isinstance(reason, str) and "not a mask's" in reason


def test_band_with_one_side_fixed():
    """`tril(ones(int(T), 8))`: T queries over 8 memory slots; only the rows follow a size."""
    band = band_pattern(np.tril(np.ones((T, 8), np.float32)), [0])
    assert not isinstance(band, str) and (band.kind, band.k) == ("tril", 0)
    np.testing.assert_array_equal(band.holds(T + 4, 8), np.tril(np.ones((T + 4, 8), bool)))
    assert band.torch("int(T)", "8") == "torch.tril(torch.ones(int(T), 8))"


def test_band_under_leading_size_one_dims():
    value = np.tril(np.ones((1, 1, T, T), np.float32))
    band = band_pattern(value, [2, 3])
    assert not isinstance(band, str) and band.kind == "tril"


@pytest.mark.parametrize("value,axes,why", [
    (np.random.default_rng(0).standard_normal((T, T)), LAST_TWO, "distinct values"),
    (np.tril(np.ones((T, T)))[::-1].copy(), LAST_TWO, "do not form a triangle"),
    (np.tril(np.ones((1, T, T))), [0], "last two"),
    (np.tril(np.ones((2, T, T))), [1, 2], "leading dims"),
], ids=["random", "flipped", "leading-axis", "leading-dim"])
def test_what_is_no_band_says_why(value, axes, why):
    reason = band_pattern(value, axes)
    assert isinstance(reason, str) and why in reason


def test_table_prefix_finds_the_table_the_constant_starts():
    pe = np.random.default_rng(1).standard_normal((1, 32, 8)).astype(np.float32)
    other = np.random.default_rng(2).standard_normal((1, 32, 8)).astype(np.float32)
    tensors = [gs.Constant("other", other), gs.Constant("pe", pe), gs.Constant("short", pe[:, :3])]
    load = lambda t: np.asarray(t.values)  # noqa: E731
    assert table_prefix(pe[:, :7], [1], tensors, load).name == "pe"
    assert "none starts" in table_prefix(pe[:, 1:8], [1], tensors, load)
    assert "no constant" in table_prefix(pe[:, :7, :4], [1], tensors, load)  # same rows, fewer columns
