"""Scratch and staging folders that never outlive graphfix.

Every folder graphfix creates for itself carries the creating process id in its name (`graphfix-<pid>-<token>` in
the system temp folder, `.<output>.graphfix-<pid>-<token>.tmp` beside an output) and a marker file inside that
repeats both. It is removed on every exit path graphfix controls (return, error, SIGINT, SIGTERM, `--timeout`).
A folder left by a process killed outright (SIGKILL) is removed by a later run that writes there, and only when
it is exactly what graphfix leaves: a real folder (no link) of this user, named as above, whose marker is a
regular file of this user with that pid and token, and whose process is gone. A folder of the user's own that
merely looks like one (`graphfix-2024-12-01`, `results.graphfix-77777-runs`) has no such marker and is kept.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import re
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from graphfix.core.errors import OutputError

WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT}  # the folder cannot take our files
MARKER = ".graphfix-staging"  # inside every folder graphfix makes: "graphfix staging <pid> <token>\n"
TOKEN = r"([a-z0-9_]{6,32})"  # tempfile.mkdtemp's random part
OWNED = (re.compile(rf"^graphfix-(?:[a-z]+-)?(\d{{1,10}})-{TOKEN}$"),
         re.compile(rf"^\..+\.graphfix-(\d{{1,10}})-{TOKEN}\.tmp$"))
_LIVE: set[Path] = set()
_SWEPT: set[str] = set()  # temp folders already swept by this process


def scratch_name(kind: str = "") -> str:
    return f"graphfix-{kind + '-' if kind else ''}{os.getpid()}-"


@contextmanager
def scratch_dir(kind: str = "") -> Iterator[str]:
    """A private folder in the system temp folder, like tempfile.TemporaryDirectory, named with our pid."""
    temp = tempfile.gettempdir()
    if temp not in _SWEPT:  # once per process and temp folder: it writes there, so it tidies there
        _SWEPT.add(temp)
        sweep(temp)
    try:
        path = _make(tempfile.mkdtemp(prefix=scratch_name(kind)))
    except OSError as exc:
        raise OutputError(f"cannot write temporary files in {temp}: {(exc.strerror or str(exc)).lower()}") from None
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
    return _make(tempfile.mkdtemp(prefix=f".{destination.name}.{scratch_name()}", suffix=".tmp",
                                  dir=destination.parent))


def _make(folder: str) -> Path:
    """Mark a folder mkdtemp just made as graphfix's (the sweep removes nothing else)."""
    path = Path(folder)
    _LIVE.add(path)
    try:
        fd = os.open(path / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(_marker_text(os.getpid(), _owner_name(path.name)[1]))
    except BaseException:
        remove(path)
        raise
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)  # fd-based on Linux: never follows a link inside
    _LIVE.discard(path)


def sweep(folder: Path | str | None = None, pid: int | None = None) -> list[Path]:
    """Remove graphfix's own folders in `folder` (default: the system temp folder) whose process is gone; with
    `pid`, only that process's."""
    folder = Path(folder if folder is not None else tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        owner = _left_by(entry)
        if owner is None or (pid is not None and owner != pid) or _alive(owner):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)  # a folder swapped for a link since is refused by rmtree
        removed.append(Path(entry.path))
    return removed


def remove_unfinished(pid: int, since: float, folders: Iterable[Path | str | None] = (None,)) -> list[Path]:
    """The folders a crashed graphfix child `pid` made in `folders` (None: the temp folder) but had not marked yet:
    killed between `mkdtemp` and the marker's write, it left a folder that `sweep` must keep (it cannot tell it
    from a user's). Only its parent, which saw it crash, can: a folder named with that pid, of this user, changed
    since the child was forked (`since`, time.time), that holds nothing or only a marker it was still writing (a
    prefix of its text), is removed. Nothing else is: not a byte of data goes with it."""
    removed = []
    for folder in folders:
        folder = Path(folder if folder is not None else tempfile.gettempdir())
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            owner, token = _owner_name(entry.name)
            if owner == pid and _unfinished(entry, since, _marker_text(pid, token).encode()):
                with contextlib.suppress(OSError):  # anything that came into it since: kept
                    os.rmdir(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _unfinished(entry: os.DirEntry, since: float, marker_text: bytes) -> bool:
    """Whether `entry` is a real folder of this user, changed since `since`, whose only content, if any, is a
    regular file named MARKER of this user holding a prefix of `marker_text` (which is then removed)."""
    try:
        info = entry.stat(follow_symlinks=False)
        if not entry.is_dir(follow_symlinks=False) or info.st_uid != os.getuid() or info.st_ctime < since - 1:
            return False
        names = os.listdir(entry.path)
    except OSError:
        return False
    if not names:
        return True
    text = _marker(entry.path) if names == [MARKER] else None
    if text is None or not marker_text.startswith(text):
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(entry.path, MARKER))
    return True


def _marker(folder: str) -> bytes | None:
    """The first bytes of the folder's marker, when it is a regular file of this user (never through a link);
    else None."""
    try:
        fd = os.open(os.path.join(folder, MARKER), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as marker:
        info = os.fstat(marker.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            return None
        return marker.read(256)


def _owner_name(name: str) -> tuple[int, str] | tuple[None, None]:
    for pattern in OWNED:
        if match := pattern.match(name):
            return int(match.group(1)), match.group(2)
    return None, None


def _marker_text(pid: int, token: str | None) -> str:
    return f"graphfix staging {pid} {token}\n"


def _left_by(entry: os.DirEntry) -> int | None:
    """The pid that made this folder, when it is one of graphfix's (see the module's docstring); else None."""
    pid, token = _owner_name(entry.name)
    if pid is None:
        return None
    try:
        if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
            return None
    except OSError:
        return None
    return pid if _marker(entry.path) == _marker_text(pid, token).encode() else None


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
