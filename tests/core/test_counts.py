"""Products and messages of the sizes a model gives (graphfix.core.counts)."""

from __future__ import annotations

import pytest

from graphfix.core.counts import bounded_product, spelled


class CountedDims(list):
    """Dims that count how many of them were read."""

    def __init__(self, dims):
        super().__init__(dims)
        self.read = 0

    def __iter__(self):
        for dim in super().__iter__():
            self.read += 1
            yield dim


def test_a_product_stops_at_the_first_dim_past_its_limit():
    dims = CountedDims([1 << 20] * 100_000)
    assert bounded_product(dims, 1 << 48) == (1 << 48) + 1
    assert dims.read == 3  # 2**60 is past the limit: not 100,000 ever longer multiplications


@pytest.mark.parametrize(("dims", "product"), [([], 1), ([4, 4], 16), ([10**18] * 1000 + [0], 0),
                                               ([1 << 24] * 2, 1 << 48)], ids=["scalar", "small", "zero", "at-limit"])
def test_a_product_within_its_limit_is_exact(dims, product):
    assert bounded_product(dims, 1 << 48) == product


@pytest.mark.parametrize(("number", "text"), [
    (0, "0"), (1_048_576, "1,048,576"), ((1 << 63) - 1, "9,223,372,036,854,775,807"),
    (1 << 63, "about 10^18"), (10**5000 + 1, "about 10^5000"), (4 * 16**5000, "about 10^6021"),
], ids=["zero", "mib", "int64-max", "2**63", "10**5000", "2**20002"])  # ids: pytest would write the numbers out
def test_a_huge_number_is_written_as_its_order_of_magnitude(number, text):
    assert spelled(number) == text
