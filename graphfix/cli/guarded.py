"""Commands' work in forked children (`graphfix.core.forked`): a crash in onnxruntime is one line with exit 2,
and the folders a crashed child said it made (scratch, staging beside the output) are removed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from graphfix.core.forked import Crashed, run_forked
from graphfix.io import staging


@contextmanager
def sweeping() -> Iterator[None]:
    """When the block fails because a forked child crashed, remove the folders that child said it made
    (staging.remove_left)."""
    try:
        yield
    except Crashed as exc:
        if exc.pid is not None:
            staging.remove_left(exc.pid, exc.made)
        raise


def in_child(work: Callable[[], Any], model: Path | str) -> Any:
    """`work()` run in a forked child; a SurgeryResult comes back without its model (the child wrote it)."""
    def slim() -> Any:
        result = work()
        return dataclasses.replace(result, model=None) if hasattr(result, "model") else result

    with sweeping():
        return run_forked(slim, str(model))
