"""Scratch and staging folders that never outlive graphfix.

Every folder graphfix creates for itself carries the creating process id in its name (`graphfix-<pid>-<token>` in
the system temp folder, `.<output>.graphfix-<pid>-<token>.tmp` beside an output) and a marker file inside that
repeats both. It is removed on every exit path graphfix controls (return, error, SIGINT, SIGTERM, `--timeout`).
graphfix deletes nothing that was not made in the same run: the folders of a forked child that crashed are removed
by its parent (`remove_left`: named with the child's pid, made since it was forked, and marked by it or holding
nothing but a marker it was still writing), and a folder left by a graphfix process killed outright (SIGKILL) from
outside stays for the user to remove. Its name and marker are text anyone can write (a repository may carry
one), so they prove nothing about who made it.
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


def scratch_name(kind: str = "") -> str:
    return f"graphfix-{kind + '-' if kind else ''}{os.getpid()}-"


@contextmanager
def scratch_dir(kind: str = "") -> Iterator[str]:
    """A private folder in the system temp folder, like tempfile.TemporaryDirectory, named with our pid."""
    temp = tempfile.gettempdir()
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


def remove_left(pid: int, since: float, folders: Iterable[Path | str | None] = (None,)) -> list[Path]:
    """The folders a crashed graphfix child `pid` of this run, forked at `since` (time.time), left in `folders`
    (None: the temp folder): a real folder of this user named with that pid and changed since the fork, that the
    child marked as its own (whatever it holds: a staged model) or that holds nothing or only a marker it was
    still writing (a prefix of its text; killed between `mkdtemp` and the marker). Nothing else goes: a folder of
    another process, or one older than the fork, is never graphfix's to delete."""
    removed = []
    for folder in folders:
        folder = Path(folder if folder is not None else tempfile.gettempdir())
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            owner, token = _owner_name(entry.name)
            if owner != pid or not _made_since(entry, since):
                continue
            text = _marker_text(pid, token).encode()
            if _marker(entry.path) == text:
                shutil.rmtree(entry.path, ignore_errors=True)  # a folder swapped for a link since is refused
                removed.append(Path(entry.path))
            elif _unfinished(entry, text):
                with contextlib.suppress(OSError):  # anything that came into it since: kept
                    os.rmdir(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _made_since(entry: os.DirEntry, since: float) -> bool:
    """Whether `entry` is a real folder (no link) of this user, changed since `since`."""
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    return entry.is_dir(follow_symlinks=False) and info.st_uid == os.getuid() and info.st_ctime >= since - 1


def _unfinished(entry: os.DirEntry, marker_text: bytes) -> bool:
    """Whether `entry`'s only content, if any, is a regular file named MARKER of this user holding a prefix of
    `marker_text` (which is then removed)."""
    try:
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
