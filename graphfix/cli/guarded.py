"""Commands' work in forked children (`graphfix.core.forked`): a crash in onnxruntime is one line with exit 2,
and what a child left (scratch folders, staging beside the output) is removed when it crashed or was stopped."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from graphfix.core.forked import Crashed, run_forked
from graphfix.io import staging


@contextmanager
def sweeping(output: Path | str | None = None) -> Iterator[None]:
    """When the block fails because a forked child crashed, remove the folders that child left (in the temp folder
    and beside `output`; see staging.remove_left)."""
    try:
        yield
    except Crashed as exc:
        if exc.pid is not None:
            staging.remove_left(exc.pid, exc.started, [None, *([Path(output).parent] if output else [])])
        raise


def in_child(work: Callable[[], Any], model: Path | str, output: Path | str | None = None) -> Any:
    """`work()` run in a forked child; a SurgeryResult comes back without its model (the child wrote it)."""
    def slim() -> Any:
        result = work()
        return dataclasses.replace(result, model=None) if hasattr(result, "model") else result

    with sweeping(output):
        return run_forked(slim, str(model))
