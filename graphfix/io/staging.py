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
A folder beside an output is in a place others may write (the output folder the user named): one graphfix made or
checked there can be swapped for a link while it runs. So folders are made, and staged files written, through the
descriptor of the folder they go in, opened without following a link (`open_folders`, `open_stage`, `create`), and
a folder is removed only while it is the one made (its device and inode): a swapped folder is never followed.
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
from typing import BinaryIO

from graphfix.core import forked
from graphfix.core.critical import stop_with
from graphfix.core.errors import OutputError

WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT}  # the folder cannot take our files
MARKER = ".graphfix-staging"  # inside every folder graphfix makes: "graphfix staging <pid> <token>\n"
TOKEN = r"([a-z0-9_]{6,32})"  # tempfile.mkdtemp's random part
OWNED = (re.compile(rf"^graphfix-(?:[a-z]+-)?(\d{{1,10}})-{TOKEN}$"),
         re.compile(rf"^\..+\.graphfix-(\d{{1,10}})-{TOKEN}\.tmp$"))
MADE_FOR_OUTPUT = "output-folder:"  # what `made` tells before "<dev>:<inode>:<absolute path>" of such a folder
FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_LIVE: dict[Path, tuple[int, int] | None] = {}  # folder -> its device and inode, once known
_MADE: dict[Path, tuple[int, int]] = {}  # folders made for an output (`open_folders`) -> their device and inode


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


def staging_dir(destination: Path, at: int | None = None) -> Path:
    """A hidden folder beside `destination` for writing it atomically; `at`: a descriptor of the destination's
    folder, in which it is made (the folder's path could lead through a link put there since)."""
    return _make(_announced_mkdtemp(f".{destination.name}.{scratch_name()}", ".tmp", str(destination.parent), at), at)


def _announced_mkdtemp(prefix: str, suffix: str, parent: str, at: int | None = None) -> str:
    """`tempfile.mkdtemp`, but each name is told to a forking parent before the folder is made (`forked.made`):
    a child killed between the two left a folder its parent was never told of (a CI run saw one after SIGTERM).
    A name told but never made is nothing the parent finds; one made but not yet marked it finds empty."""
    import secrets  # here, not at the top: it loads OpenSSL's hashlib, which `diagnose --static` never needs (#23)

    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789_"  # mkdtemp's: what OWNED's TOKEN reads back
    for _ in range(tempfile.TMP_MAX):
        path = os.path.join(parent, prefix + "".join(secrets.choice(alphabet) for _ in range(8)) + suffix)
        forked.made(os.path.abspath(path))  # absolute: never read as MADE_FOR_OUTPUT's
        try:
            os.mkdir(path if at is None else os.path.basename(path), 0o700, dir_fd=at)
        except FileExistsError:
            continue
        return os.path.abspath(path)
    raise FileExistsError(errno.EEXIST, "no usable temporary folder name found", parent)


def _make(folder: str, at: int | None = None) -> Path:
    """Mark a folder `_announced_mkdtemp` just made (in `at`, where given) as graphfix's, through its descriptor,
    and record which it is: refused where what has its name now is no empty folder of this user (swapped)."""
    path = Path(folder)
    _LIVE[path] = None
    try:
        fd = os.open(path if at is None else path.name, FOLDER | os.O_NOFOLLOW, dir_fd=at)
        try:
            info = os.fstat(fd)
            if info.st_uid != os.getuid() or os.listdir(fd):
                raise OutputError(f"cannot write in {path.parent}: the staging folder {path.name} was replaced "
                                  "while graphfix made it")
            _LIVE[path] = (info.st_dev, info.st_ino)
            with create(MARKER, fd, mode=0o600) as f:
                f.write(_marker_text(os.getpid(), _owner_name(path.name)[1]).encode())
        finally:
            os.close(fd)
    except BaseException:
        remove(path, at)
        raise
    return path


def identity(folder: Path) -> tuple[int, int] | None:
    """The device and inode of a folder `staging_dir` or `scratch_dir` made (None once removed)."""
    return _LIVE.get(folder)


def open_stage(folder: Path, at: int, made: tuple[int, int] | None = None) -> int:
    """A descriptor of the folder `staging_dir` made, found in `at` without following a link; refused (one line)
    unless it is that folder (`made`, by default the one recorded): files staged through it land there or nowhere."""
    made = made or _LIVE.get(folder)
    try:
        fd = os.open(folder.name, FOLDER | os.O_NOFOLLOW, dir_fd=at)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            raise
        fd = None
    if fd is not None:
        info = os.fstat(fd)
        if made in (None, (info.st_dev, info.st_ino)):
            return fd
        os.close(fd)
    raise OutputError(f"cannot write in {folder.parent}: its staging folder {folder.name} was replaced while "
                      "graphfix wrote there (graphfix writes nothing through a link there)")


def create(name: str, at: int, append: bool = False, mode: int = 0o666) -> BinaryIO:
    """A new file `name` (with `append`, the one there, written at its end) in the folder open as `at`, never
    through a link and never over a file that is there."""
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if append else os.O_CREAT | os.O_EXCL)
    return os.fdopen(os.open(name, flags, mode, dir_fd=at), "ab" if append else "wb")


def make_folders(folder: Path) -> tuple[Path, ...]:
    """`folder.mkdir(parents=True, exist_ok=True)` as `open_folders` does it, returning the folders it made."""
    fd, made = open_folders(folder)
    os.close(fd)
    return made


def open_folders(folder: Path, root: Path | None = None) -> tuple[int, tuple[Path, ...]]:
    """A descriptor of `folder`, its missing folders made, and the folders this call made, deepest first: what
    `remove_made` may take back (a folder another process made meanwhile is not among them). From the deepest
    folder that exists (or `root`, the output folder the user named, where that is above it), each folder is
    made and opened through the descriptor of the one above, never through a link: a folder swapped for a link
    after it was made or checked is refused (one line), and nothing is made where the link leads."""
    base = next((p for p in (folder, *folder.parents) if os.path.lexists(p)), Path(folder.anchor or "."))
    if root is not None and root in base.parents:
        base = root
    fd = os.open(base, FOLDER)
    made: list[Path] = []
    try:
        for depth, part in enumerate(folder.relative_to(base).parts, 1):
            path = base.joinpath(*folder.relative_to(base).parts[:depth])
            inner = _step(fd, part, path, folder, made)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        remove_made(made)
        raise
    return fd, tuple(made)


def _step(fd: int, part: str, path: Path, folder: Path, made: list[Path]) -> int:
    """The folder `part` in the folder open as `fd`, made where missing (then put first in `made`, and told to a
    forking parent), opened without following a link."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(part, dir_fd=fd)
        made.insert(0, path)
    try:
        inner = os.open(part, FOLDER | os.O_NOFOLLOW, dir_fd=fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise OutputError(f"cannot write in {folder}: {path} is a symbolic link or no folder (graphfix writes "
                          "nothing through a link there)") from None
    if made and made[0] == path:
        info = os.fstat(inner)
        if info.st_uid != os.getuid():  # what has the name now is not the folder made: another user's
            os.close(inner)
            raise OutputError(f"cannot write in {folder}: {path} was replaced while graphfix made it")
        _MADE[path] = (info.st_dev, info.st_ino)
        _tell_made(path, info)
    return inner


def _tell_made(folder: Path, info: os.stat_result) -> None:
    """Tell a forking parent that this folder was made for an output, after making it (a folder of that name that
    another process made first is not ours) and with its inode (one made again in its place is not ours either):
    a worker that crashes or is killed before writing its output left it (`remove_left`)."""
    forked.made(f"{MADE_FOR_OUTPUT}{info.st_dev}:{info.st_ino}:{os.path.abspath(folder)}")


def remove_made(folders: Iterable[Path]) -> None:
    """Remove the folders `make_folders` made, deepest first, each only while it is the one made and empty:
    whatever came into one since (another process's files) keeps it and the folders above it, and a folder found
    at its path through a link swapped in since is not it."""
    for folder in folders:
        if not _rmdir_made(folder, _MADE.pop(folder, None)):
            return


def _rmdir_made(folder: Path, made: tuple[int, int] | None) -> bool:
    """Remove the empty `folder` where it is the one made (device and inode), found in its parent's descriptor:
    wherever the parent's path leads, only that folder goes."""
    try:
        parent = os.open(folder.parent, FOLDER)
    except OSError:
        return False
    try:
        info = os.stat(folder.name, dir_fd=parent, follow_symlinks=False)
        if made is None or (info.st_dev, info.st_ino) != made:
            return False
        os.rmdir(folder.name, dir_fd=parent)
    except OSError:
        return False
    finally:
        os.close(parent)
    return True


def remove(path: Path, at: int | None = None, made: tuple[int, int] | None = None) -> None:
    """Remove a folder graphfix made, with all it holds, only while it is that folder (`made`, its device and
    inode, by default the ones recorded as it was made): found in `at`, a descriptor of the folder it is in, else in
    its parent opened by path (which could lead through a link put there since: what is found there then is not
    it, and stays)."""
    made = made or _LIVE.get(path)
    _LIVE.pop(path, None)
    try:
        parent = os.open(path.parent, FOLDER) if at is None else at
    except OSError:
        return
    try:
        info = os.stat(path.name, dir_fd=parent, follow_symlinks=False)
        if (info.st_dev, info.st_ino) == made:  # not known (swapped as it was made): kept
            shutil.rmtree(path.name, ignore_errors=True, dir_fd=parent)  # fd-based: never follows a link inside
    except OSError:
        pass
    finally:
        if at is None:
            os.close(parent)


def forget(path: Path) -> None:
    """No longer remove this folder at exit: it was removed, or is not where graphfix made it."""
    _LIVE.pop(path, None)


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
        made = (int(device), int(inode))
    except ValueError:
        return []
    return [Path(folder)] if _rmdir_made(Path(folder), made) else []


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
        stop_with(SystemExit(128 + signum))  # at once, or once an output being moved into place is there

    def interrupt(signum, frame):
        stop_with(KeyboardInterrupt())

    for signum in forked.ENDING:
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, stop)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt)


atexit.register(_remove_all)
