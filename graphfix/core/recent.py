"""What a reading of a model gave for the last few models, by identity: a proof asks the same questions of one model
at every probe size (its limits, steps, ties, windows), and a ModelProto is not hashable, so `functools.lru_cache`
cannot key it. The model is kept alive while it is among the last few; a model changed in place is a new question
only where it is a new object (graphfix's passes copy before they change one)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

MODELS = 4


def per_model(read: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`read(model)`, remembered for the last `MODELS` models; `.keep(model, value)` remembers a value another
    reading found on the way (the size analysis' constraints, found while reading the windows' lengths)."""
    recent: list[tuple[object, object]] = []

    @functools.wraps(read)
    def remembered(model):
        for known, found in recent:
            if known is model:
                return found
        found = read(model)
        keep(model, found)
        return found

    def keep(model, found) -> None:
        recent[:] = [(model, found), *(pair for pair in recent[:MODELS] if pair[0] is not model)][:MODELS]

    remembered.keep = keep
    return remembered
