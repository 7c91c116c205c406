"""Scratch and staging folders that never outlive graphfix.

Every folder graphfix creates for itself carries the creating process id in its name: `graphfix-<pid>-*` in the
system temp folder, `.<output>.graphfix-<pid>-*.tmp` beside an output. It is removed on every exit path graphfix
controls (return, error, SIGINT, SIGTERM, `--timeout`); a folder left by a process killed outright (SIGKILL) is
removed by the next run that finds its owner gone.
"""

from __future__ import annotations

import atexit
import errno
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from graphfix.core.errors import OutputError

WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT}  # the folder cannot take our files
OWNED = re.compile(r"^\.?(?:.*\.)?graphfix-(?:[a-z]+-)?(\d+)-[^/]*$")
_LIVE: set[Path] = set()


def scratch_name(kind: str = "") -> str:
    return f"graphfix-{kind + '-' if kind else ''}{os.getpid()}-"


@contextmanager
def scratch_dir(kind: str = "") -> Iterator[str]:
    """A private folder in the system temp folder, like tempfile.TemporaryDirectory, named with our pid."""
    try:
        path = Path(tempfile.mkdtemp(prefix=scratch_name(kind)))
    except OSError as exc:
        raise OutputError(f"cannot write temporary files in {tempfile.gettempdir()}: "
                          f"{(exc.strerror or str(exc)).lower()}") from None
    _LIVE.add(path)
    try:
        yield str(path)
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise OutputError(f"cannot write temporary files in {path.parent}: {exc.strerror.lower()}") from None
    finally:
        remove(path)


def staging_dir(destination: Path) -> Path:
    """A hidden folder beside `destination` for writing it atomically."""
    sweep(destination.parent)
    path = Path(tempfile.mkdtemp(prefix=f".{destination.name}.{scratch_name()}", suffix=".tmp",
                                 dir=destination.parent))
    _LIVE.add(path)
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    _LIVE.discard(path)


def sweep(folder: Path | str | None = None) -> list[Path]:
    """Remove graphfix folders in `folder` (default: the system temp folder) whose owning process is gone."""
    folder = Path(folder if folder is not None else tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = OWNED.match(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False) or _alive(int(match.group(1))):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a number no process can have: keep, to be safe)
    return True


def _remove_all() -> None:
    for path in list(_LIVE):
        remove(path)


def install_signal_cleanup() -> None:
    """SIGTERM ends graphfix like SIGINT does: by an exception, so every `finally` and context manager runs."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, stop)


atexit.register(_remove_all)
