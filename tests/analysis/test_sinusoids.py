"""graphfix.analysis.sinusoids: position tables identified from their values, as the libraries compute them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graphfix.analysis.sinusoids import sinusoid_table

torch = pytest.importorskip("torch")
D = 16


def transformer(length: int) -> np.ndarray:  # the PyTorch tutorial's PositionalEncoding (interleaved)
    pe = torch.zeros(length, D)
    position = torch.arange(0, length, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, D, 2).float() * (-math.log(10000.0) / D))
    pe[:, 0::2], pe[:, 1::2] = torch.sin(position * div_term), torch.cos(position * div_term)
    return pe[None].numpy()


def whisper(length: int) -> np.ndarray:  # openai-whisper's `sinusoids` (concatenated, fairseq's spacing)
    increment = np.log(10000) / (D // 2 - 1)
    inv = torch.exp(-increment * torch.arange(D // 2))
    scaled = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)[None].numpy()


def rotary(length: int, part) -> np.ndarray:  # transformers' rotary cos/sin cache (halves duplicated)
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    freqs = torch.outer(torch.arange(length).float(), inv)
    return part(torch.cat([freqs, freqs], -1))[None].numpy()


TABLES = {
    "transformer": (transformer, "interleaved sin/cos"),
    "whisper": (whisper, "concatenated sin|cos"),
    "rotary-cos": (lambda n: rotary(n, torch.cos), "duplicated cos"),
    "rotary-sin": (lambda n: rotary(n, torch.sin), "duplicated sin"),
}


@pytest.mark.parametrize("name", TABLES)
def test_library_tables_are_identified_and_regrown_to_any_length(name):
    make, layout = TABLES[name]
    table = sinusoid_table(make(7), [1])
    assert not isinstance(table, str), table
    assert table.layout == layout
    for length in (3, 7, 64, 500):
        np.testing.assert_allclose(table.values(length), make(length)[0], atol=2e-5)


@pytest.mark.parametrize("value,why", [
    (np.random.default_rng(0).standard_normal((1, 7, D)).astype(np.float32), "first row"),
    (transformer(2), "too few"),
    (np.concatenate([np.zeros((1, 1, D)), np.random.default_rng(1).uniform(-1, 1, (1, 6, D))], 1), "not sines"),
    (transformer(7) * 0.5, "first row"),  # scaled: not a unit sinusoid
    (np.round(transformer(7), 2), "not sines"),  # learned values that start like a table
    (np.arange(7 * D, dtype=np.int64).reshape(1, 7, D), "not a float"),
], ids=["learned", "two-rows", "random-after-row-0", "scaled", "rounded", "integers"])
def test_values_that_follow_no_table_are_not_one(value, why):
    reason = sinusoid_table(value.astype(value.dtype), [1])
    assert isinstance(reason, str) and why in reason, reason


def test_frequencies_off_a_geometric_series_are_not_a_table():
    angles = np.arange(7)[:, None] * np.array([1.0, 0.5, 0.3, 0.01])[None, :]
    table = np.concatenate([np.sin(angles), np.cos(angles)], 1)[None].astype(np.float32)
    reason = sinusoid_table(table, [1])
    assert isinstance(reason, str) and "geometric" in reason


def numpy_table(length: int) -> np.ndarray:  # the Transformer's table as numpy computes it: float64 throughout
    position = np.arange(length)[:, None]
    div_term = np.exp(np.arange(0, D, 2) * (-math.log(10000.0) / D))
    pe = np.zeros((length, D))
    pe[:, 0::2], pe[:, 1::2] = np.sin(position * div_term), np.cos(position * div_term)
    return pe[None]


def test_a_table_computed_in_float64_is_regrown_in_float64():
    """Regrown in float32, it drifted by 7e-5 at 5000 rows."""
    table = sinusoid_table(numpy_table(12), [1])
    assert not isinstance(table, str) and table.precision is np.float64
    np.testing.assert_allclose(table.values(5000), numpy_table(5000)[0], rtol=0, atol=1e-9)


def test_a_float32_table_kept_as_float64_is_still_regrown_as_float32_computes_it():
    table = sinusoid_table(transformer(12).astype(np.float64), [1])
    assert not isinstance(table, str) and table.precision is np.float32
    np.testing.assert_allclose(table.values(300), transformer(300)[0], atol=2e-5)


def test_a_float64_table_stored_as_float32_is_regrown_in_float64():
    """numpy's table in a float32 model (`torch.from_numpy(pe).float()`): the float64 formula rounded, bit for bit,
    where float32 arithmetic is not (computed in float32 it drifted by 2.8e-4 at 20000 rows)."""
    table = sinusoid_table(numpy_table(12).astype(np.float32), [1])
    assert not isinstance(table, str) and table.precision is np.float64
    np.testing.assert_allclose(table.values(20000).astype(np.float32), numpy_table(20000)[0], rtol=0, atol=1e-7)
