"""Scratch and staging folders that never outlive graphfix.

Every folder graphfix creates for itself carries the creating process id in its name (`graphfix-<pid>-<token>` in
the system temp folder, `.<output>.graphfix-<pid>-<token>.tmp` beside an output) and a marker file inside that
repeats both. It is removed on every exit path graphfix controls (return, error, `--timeout`, SIGINT, and the
signals that would end it at once: `forked.ENDING`), and a child stopped by its parent leaves none: the parent
removes what the child said it made. graphfix deletes nothing another process made: a forked child tells its parent
each folder it makes as it makes it (`graphfix.core.forked.made`), and if the child crashes or is killed the parent
removes those folders and no other (`remove_left`). Names, markers, owners and times prove nothing: a checkout can
carry a forged marker, and a container beside this one can have a child of the same pid. A graphfix process killed
outright (SIGKILL) from outside cannot clean up: its forked worker is stopped as it ends (`forked._end_with`) and
removes its own folders, and a folder the killed process made itself stays for the user to remove.
The folders made for an output (`make_folders`: `-o new1/new2/out.onnx`) go too where nothing was written in them
(`remove_made`); a crashed or killed worker tells its parent each as it makes it (with its inode), and the parent
removes them, deepest first, each only while it is that folder and empty (`remove_left`).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from graphfix.core import forked
from graphfix.core.errors import OutputError

WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT}  # the folder cannot take our files
MARKER = ".graphfix-staging"  # inside every folder graphfix makes: "graphfix staging <pid> <token>\n"
TOKEN = r"([a-z0-9_]{6,32})"  # tempfile.mkdtemp's random part
OWNED = (re.compile(rf"^graphfix-(?:[a-z]+-)?(\d{{1,10}})-{TOKEN}$"),
         re.compile(rf"^\..+\.graphfix-(\d{{1,10}})-{TOKEN}\.tmp$"))
MADE_FOR_OUTPUT = "output-folder:"  # what `made` tells before "<dev>:<inode>:<absolute path>" of such a folder
_LIVE: set[Path] = set()


def scratch_name(kind: str = "") -> str:
    return f"graphfix-{kind + '-' if kind else ''}{os.getpid()}-"


@contextmanager
def scratch_dir(kind: str = "") -> Iterator[str]:
    """A private folder in the system temp folder, like tempfile.TemporaryDirectory, named with our pid."""
    temp = tempfile.gettempdir()
    try:
        path = _make(_announced_mkdtemp(scratch_name(kind), "", temp))
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
    return _make(_announced_mkdtemp(f".{destination.name}.{scratch_name()}", ".tmp", str(destination.parent)))


def _announced_mkdtemp(prefix: str, suffix: str, parent: str) -> str:
    """`tempfile.mkdtemp`, but each name is told to a forking parent before the folder is made (`forked.made`):
    a child killed between the two left a folder its parent was never told of (a CI run saw one after SIGTERM).
    A name told but never made is nothing the parent finds; one made but not yet marked it finds empty."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789_"  # mkdtemp's: what OWNED's TOKEN reads back
    for _ in range(tempfile.TMP_MAX):
        path = os.path.join(parent, prefix + "".join(secrets.choice(alphabet) for _ in range(8)) + suffix)
        forked.made(os.path.abspath(path))  # absolute: never read as MADE_FOR_OUTPUT's
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return os.path.abspath(path)
    raise FileExistsError(errno.EEXIST, "no usable temporary folder name found", parent)


def _make(folder: str) -> Path:
    """Mark a folder `_announced_mkdtemp` just made as graphfix's."""
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


def make_folders(folder: Path) -> tuple[Path, ...]:
    """`folder.mkdir(parents=True, exist_ok=True)`, returning the folders this call made, deepest first: what
    `remove_made` may take back (a folder another process made meanwhile is not among them)."""
    missing = []
    for parent in (folder, *folder.parents):
        if os.path.lexists(parent):
            break
        missing.append(parent)
    made: list[Path] = []
    try:
        for parent in reversed(missing):
            try:
                os.mkdir(parent)
            except FileExistsError:
                if not parent.is_dir():
                    raise
                continue
            made.insert(0, parent)
            _tell_made(parent)
    except BaseException:
        remove_made(made)
        raise
    return tuple(made)


def _tell_made(folder: Path) -> None:
    """Tell a forking parent that this folder was made for an output, after making it (a folder of that name that
    another process made first is not ours) and with its inode (one made again in its place is not ours either):
    a worker that crashes or is killed before writing its output left it (`remove_left`)."""
    with contextlib.suppress(OSError):
        info = os.lstat(folder)
        forked.made(f"{MADE_FOR_OUTPUT}{info.st_dev}:{info.st_ino}:{os.path.abspath(folder)}")


def remove_made(folders: Iterable[Path]) -> None:
    """Remove the folders `make_folders` made, deepest first, each only while empty: whatever came into one since
    (another process's files) keeps it and the folders above it."""
    for folder in folders:
        try:
            os.rmdir(folder)  # never through a link: one put in its place is no folder to rmdir
        except OSError:
            return


def remove(path: Path, at: int | None = None) -> None:
    """Remove a folder graphfix made, with all it holds; `at`: a descriptor of the folder it is in, through which
    it is found (its path could lead through a link put there since)."""
    if at is None:
        shutil.rmtree(path, ignore_errors=True)  # fd-based on Linux: never follows a link inside
    else:
        shutil.rmtree(path.name, ignore_errors=True, dir_fd=at)
    _LIVE.discard(path)


def forget(path: Path) -> None:
    """No longer remove this folder at exit: it was removed, or is not where graphfix made it."""
    _LIVE.discard(path)


def remove_left(pid: int, made: Iterable[str]) -> list[Path]:
    """The folders a crashed graphfix child `pid` of this run said it made (`made`), each where it still is a real
    folder of this user that the child marked as its own (whatever it holds: a staged model) or that holds nothing
    or only a marker it was still writing; and the folders it made for its output (`make_folders`), each while it
    is the one made (same inode) and empty. Nothing it did not name goes. Deepest first: the child names each
    folder before any made inside it (its staging folder in `-o new1/new2/out.onnx`, then new2, then new1)."""
    removed = []
    for folder in reversed(list(made)):
        if folder.startswith(MADE_FOR_OUTPUT):
            removed.extend(_remove_made_for_output(folder[len(MADE_FOR_OUTPUT):]))
            continue
        _, token = _owner_name(os.path.basename(folder))
        text = _marker_text(pid, token).encode()
        try:
            info = os.lstat(folder)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        if _marker(folder) == text:
            shutil.rmtree(folder, ignore_errors=True)  # fd-based: never follows a link inside
            removed.append(Path(folder))
        elif _unfinished(folder, text):
            with contextlib.suppress(OSError):  # anything that came into it since: kept
                os.rmdir(folder)
                removed.append(Path(folder))
    return removed


def _remove_made_for_output(told: str) -> list[Path]:
    """The folder `_tell_made` told of ("<dev>:<inode>:<path>"), removed if it is still that folder and empty
    (the output written in it keeps it, as does anything else that came into it)."""
    device, inode, folder = told.split(":", 2)
    try:
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or (info.st_dev, info.st_ino) != (int(device), int(inode)):
            return []
        os.rmdir(folder)
    except (OSError, ValueError):
        return []
    return [Path(folder)]


forked.on_left(remove_left)  # a child killed after its grace (inside one onnxruntime call) leaves its folders


def _unfinished(folder: str, marker_text: bytes) -> bool:
    """Whether the folder's only content, if any, is a regular file named MARKER of this user holding a prefix of
    `marker_text` (which is then removed)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    if not names:
        return True
    text = _marker(folder) if names == [MARKER] else None
    if text is None or not marker_text.startswith(text):
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(folder, MARKER))
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
    """SIGTERM, SIGHUP (a closed terminal, a stopped session) and the other signals that end a process at once
    (`forked.ENDING`) end graphfix like SIGINT does: by an exception, so every `finally` and context manager runs.
    Their default action ended the process, its folders left. A handler set by whoever embeds graphfix is kept."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    for signum in forked.ENDING:
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, stop)


atexit.register(_remove_all)
