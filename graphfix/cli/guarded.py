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
    """Remove the folders of dead graphfix processes (a crashed or stopped child) when the block fails."""
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, Crashed) and exc.pid is not None:  # the folders it had not marked yet, first
            staging.remove_unfinished(exc.pid, exc.started, [None, *([Path(output).parent] if output else [])])
        staging.sweep()
        if output is not None:
            staging.sweep(Path(output).parent)
        raise


def in_child(work: Callable[[], Any], model: Path | str, output: Path | str | None = None) -> Any:
    """`work()` run in a forked child; a SurgeryResult comes back without its model (the child wrote it)."""
    def slim() -> Any:
        result = work()
        return dataclasses.replace(result, model=None) if hasattr(result, "model") else result

    with sweeping(output):
        return run_forked(slim, str(model))
