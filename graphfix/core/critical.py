"""Writes that a stop must not cut in half: a model and its data moved into place (graphfix.io.saving).

A stop (`--timeout`'s SIGALRM, SIGTERM, Ctrl-C) raises an exception at the next bytecode wherever Python is. One
raised between the moves of a model's data and of its graph left the data alone in the output folder; one raised
after both said "nothing was written" (helper 126). Inside `uninterrupted()` the stops graphfix raises
(`stop_with`: its handlers of those signals) wait for the section's end. Python runs every handler in the main
thread, whichever thread the signal reached, so masking the signal in one thread would not hold it.

    with uninterrupted():
        move(data); move(graph); forked.committed(path)   # a stop meanwhile is raised here, once both moved
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0
_pending: list[BaseException] = []


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold the stops `stop_with` raises until the section ends, then raise the first."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending:
            stop = _pending[0]
            _pending.clear()
            raise stop


def stop_with(stop: BaseException) -> None:
    """Raise `stop` now, or where the running `uninterrupted()` section ends (a signal handler's last word)."""
    if _depth:
        _pending.append(stop)
        return
    raise stop
