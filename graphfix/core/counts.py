"""Products of the sizes a model gives, and how a message writes them.

A model's dims are numbers up to 2**63, as many as it likes: the product of 100,000 dims of 10**18 has 1.8 million
digits, and multiplying them one by one takes time quadratic in their count (a minute for a 1 MB file), so a
product is bounded while it is made. Python will not write an int of more than 4300 digits as text (a ValueError
where a message was due), so a message writes a huge number as its order of magnitude.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MAX_RANK = 64  # numpy's NPY_MAXDIMS: no array of more dims can be made
EXACT_BELOW = 1 << 63  # numbers a message writes out in full


def bounded_product(dims: Sequence[int], limit: int) -> int:
    """The product of `dims` (each >= 0), or `limit + 1` as soon as it is past `limit` (unless a zero among them
    makes it 0)."""
    if 0 in dims:
        return 0
    product = 1
    for dim in dims:
        product *= dim
        if product > limit:
            return limit + 1
    return product


def spelled(number: int) -> str:
    """`number` with thousands separators ('1,048,576'), or from 2**63 on its order of magnitude ('about 10^1505',
    within a power of ten)."""
    if number < EXACT_BELOW:
        return f"{number:,}"
    return f"about 10^{math.floor(math.log10(number))}"
