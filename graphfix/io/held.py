"""Files opened once, checked on the descriptor, and read only through that descriptor.

A path checked with `stat` and opened later can be swapped in between (for a symbolic link to a file elsewhere, or
for a FIFO that blocks the reader forever). So every model and external data file is opened once, without
following a link in its last component and without blocking (`O_NOFOLLOW | O_NONBLOCK`), checked with `fstat`
(a regular file; a data file also has one link) and, where Linux's /proc tells, on where the descriptor really
points, and kept open: reading, memory-mapping and copying it later use that descriptor only (`os.pread`, `mmap`),
whatever has happened to the path since.

`held(base_dir)` gives the data files of one model folder, shared by everything that reads that folder in this
process (analysis, onnxruntime sessions, the copy into the output) while a loaded model keeps them alive.
"""

from __future__ import annotations

import contextlib
import errno
import io
import mmap
import os
import resource
import stat
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from graphfix.core.errors import InputError

OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
COPY_CHUNK = 64 << 20
TOO_MANY = frozenset({errno.EMFILE, errno.ENFILE})
KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class HeldFile:
    """One regular file, open for reading; `fd` stays valid until the object goes."""

    def __init__(self, path: Path | str, name: str, allowed: Callable[[str], bool] | None = None):
        """`allowed(real path)`: where a file may be (a model's data files: its folder); a link to anywhere else
        is refused before it is opened, and a folder on the way swapped for one is refused once open (helper 55
        swapped a data file for a link between its check and its open). Without it, the user's own link is
        followed once, here."""
        real = os.path.realpath(path)
        try:
            if allowed is None:
                self.fd = _with_room(lambda: os.open(real, OPEN_FLAGS))
            else:
                self.fd, real = _with_room(lambda: _open_allowed(path, name, allowed))
        except OSError as exc:
            raise InputError(f"{name}: cannot be opened ({_reason(exc)})") from None
        try:
            info = os.fstat(self.fd)
            kind = next((what for test, what in KINDS if test(info.st_mode)), None)
            if kind or not stat.S_ISREG(info.st_mode):
                raise InputError(f"{name}: is {kind or 'not a regular file'}, not a regular file")
            opened = _opened_path(self.fd)
            if opened not in (None, real):  # a folder on the way swapped for a link meanwhile
                raise InputError(f"{name}: changed while it was opened; refusing to read it")
        except BaseException:
            os.close(self.fd)
            raise
        self.name = name
        self.path = Path(real)
        self.size = info.st_size
        self.modified = info.st_mtime_ns
        self.links = info.st_nlink
        self._map: mmap.mmap | None = None
        self._lock = threading.Lock()
        weakref.finalize(self, os.close, self.fd)

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes from the descriptor (positional: threads sharing the file do not disturb each other)."""
        length = self.size - offset if length is None else length
        first = os.pread(self.fd, length, offset)  # one read of a regular file gives it all (up to 2 GB)
        if len(first) == length:
            return first
        chunks, done = [first], len(first)
        while done < length:
            chunk = os.pread(self.fd, min(length - done, 64 << 20), offset + done)
            if not chunk:
                raise OSError(f"{self.path} ended before {length} bytes from offset {offset} were read")
            chunks.append(chunk)
            done += len(chunk)
        return b"".join(chunks)

    def copy_to(self, out, offset: int, length: int) -> None:
        """Write `length` bytes from `offset` to the file object `out` at its position. The kernel copies them
        (`copy_file_range`: no pass through this process, twice as fast as reading and writing on ext4, a
        reflink on file systems that share extents); in chunks through this process where it cannot."""
        out.flush()
        start = out.tell()
        try:
            target = out.fileno()
        except (AttributeError, io.UnsupportedOperation):  # an in-memory file: no descriptor to copy to
            done = 0
        else:
            done = _copy_in_kernel(self.fd, target, offset, start, length)
            out.seek(start + done)
        while done < length:
            chunk = self.read(offset + done, min(length - done, COPY_CHUNK))
            out.write(chunk)
            done += len(chunk)

    def changed(self) -> bool:
        """Whether the file was written since it was opened (its size or its modification time moved)."""
        info = os.fstat(self.fd)
        return (info.st_size, info.st_mtime_ns) != (self.size, self.modified)

    def mapped(self) -> mmap.mmap:
        """The whole file, memory-mapped read-only from the descriptor (once). Python's mmap keeps a descriptor of
        its own, so a mapped data file holds two: past the open-file limit the map fails as an open does (a model
        with 1,500 data files under `ulimit -n 1024` crashed a rule and `bench`, helper 148)."""
        with self._lock:
            if self._map is None and not self.size:
                self._map = mmap.mmap(-1, 1)
            elif self._map is None:
                try:
                    self._map = _with_room(lambda: mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ))
                except OSError as exc:
                    if exc.errno not in TOO_MANY:
                        raise
                    raise InputError(f"{self.name}: cannot be mapped ({_reason(exc)})") from None
            return self._map


def open_model(path: Path) -> HeldFile:
    """The model file named on the command line, opened once; a FIFO, device or folder is refused."""
    return HeldFile(path, str(path))


class DataFiles:
    """The external data files of one model folder, each opened at most once, by location."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self._files: dict[str, HeldFile] = {}
        self._lock = threading.Lock()

    def open(self, location: str, name: str, allowed: Callable[[str], bool] | None = None) -> HeldFile:
        with self._lock:
            held_file = self._files.get(location)
            if held_file is None:
                held_file = self._files[location] = HeldFile(self.base_dir / location, name, allowed)
            return held_file

    def get(self, location: str) -> HeldFile | None:
        return self._files.get(location)

    def drop(self, location: str) -> None:
        """Let go of a file opened and then refused: nothing reads it later by its location."""
        with self._lock:
            self._files.pop(location, None)

    def opened(self) -> list[HeldFile]:
        with self._lock:
            return list(self._files.values())


_FOLDERS: weakref.WeakValueDictionary[str, DataFiles] = weakref.WeakValueDictionary()
_FOLDERS_LOCK = threading.Lock()


def held(base_dir: Path) -> DataFiles:
    """The data files of `base_dir` held in this process (a new, empty set when nothing holds them)."""
    key = os.path.realpath(base_dir)
    with _FOLDERS_LOCK:
        files = _FOLDERS.get(key)
        if files is None:
            files = DataFiles(Path(base_dir))
            _FOLDERS[key] = files
        return files


def _copy_in_kernel(src: int, dst: int, src_offset: int, dst_offset: int, length: int) -> int:
    """Bytes `os.copy_file_range` copied, up to `length`; fewer (0 at worst) where the platform, the file
    systems or the source's end stop it, and the caller copies the rest itself."""
    done = 0
    while done < length:
        try:
            copied = os.copy_file_range(src, dst, min(length - done, COPY_CHUNK), src_offset + done,
                                        dst_offset + done)
        except (AttributeError, OSError):  # no such call, across file systems (old kernels), not supported
            return done
        if copied <= 0:
            return done
        done += copied
    return done


Opened = TypeVar("Opened")


def _with_room(open_it: Callable[[], Opened]) -> Opened:
    """`open_it()`, tried once more where it ran out of descriptors and the soft limit on open files could be
    raised: every data file of a model is held open (and mapped, a second descriptor), so a model saved one tensor
    per file (torch's default past 2 GB) can need more than the 1,024 many shells start with."""
    try:
        return open_it()
    except OSError as exc:
        if exc.errno != errno.EMFILE or not _more_open_files():
            raise
    return open_it()


def _more_open_files() -> bool:
    """Raise this process's soft limit on open files to its hard limit, as the user could with `ulimit -n`;
    whether it rose. Only when a file could not be opened: a model with few data files changes nothing."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard  # Linux refuses an infinite one
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return False
    return True


def _reason(exc: OSError) -> str:
    if exc.errno == getattr(os, "ELOOP", -1):
        return "it became a symbolic link after it was checked"
    if exc.errno == errno.ENFILE:
        return "too many files are open on this system"
    if exc.errno == errno.EMFILE:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return (f"too many open files: each data file of the model is held open, and this process may hold "
                f"{limit} at once (`ulimit -n`); raise that limit to read a model kept in this many files")
    return (exc.strerror or str(exc)).lower()


def _open_allowed(path: Path | str, name: str, allowed: Callable[[str], bool]) -> tuple[int, str]:
    """The descriptor of `path` and the real path it holds, opened without following a link the check did not
    see: its last part is opened as it is (O_NOFOLLOW), and a link there is resolved and checked first."""
    try:
        fd = os.open(path, OPEN_FLAGS)  # O_NOFOLLOW: a link there is ELOOP
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        real = os.path.realpath(path)  # a link: allowed only where it stays (a hub snapshot's blobs)
        if not allowed(real):
            raise InputError(f"{name}: points outside the model's folder ('{path}' -> '{real}'), a link made "
                             "while it was read; refusing to read outside the model's folder") from None
        fd = os.open(real, OPEN_FLAGS)
    real = _opened_path(fd) or os.path.realpath(path)
    if not allowed(real):
        os.close(fd)
        raise InputError(f"{name}: points outside the model's folder ('{path}' -> '{real}'), a link made while it "
                         "was read; refusing to read outside the model's folder")
    return fd, real


def _opened_path(fd: int) -> str | None:
    """Where the descriptor really points (Linux's /proc), or None where that cannot be asked."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def copy_used(src: HeldFile, dst: Path | BinaryIO, end: int | None = None) -> None:
    """Copy the first `end` bytes of `src` (all of it when None) to a new file `dst` (a path, or a file open for
    writing), holes left as holes: only the extents the file system reports as data (SEEK_DATA/SEEK_HOLE) are read
    and written, so a sparse data file with a huge hole cannot turn into gigabytes on disk, and nothing past the
    tensors' bytes is copied."""
    end = src.size if end is None else end
    if end > src.size:
        raise InputError(f"{src.path}: is {src.size} bytes but its tensors need {end} (changed since it was checked)")
    with open(dst, "wb") if isinstance(dst, str | os.PathLike) else contextlib.nullcontext(dst) as out:
        for start, stop in data_extents(src.fd, end):
            out.seek(start)
            src.copy_to(out, start, stop - start)
        out.truncate(end)


def copy_range(src: HeldFile, out: BinaryIO, offset: int, length: int) -> None:
    """Write `length` bytes of `src` from `offset` to `out` at its position, holes left as holes (as `copy_used`
    does for a whole file): a weight kept in a hole of a sparse data file (gigabytes long, nothing on disk) stays
    one in a changed model's data file, rather than becoming gigabytes of written zeros. `out` ends after them."""
    start = out.tell()
    for begin, stop in data_extents(src.fd, offset + length, offset):
        out.seek(start + begin - offset)
        src.copy_to(out, begin, stop - begin)
    out.seek(start + length)
    out.truncate()  # a trailing hole: the file reaches the tensor's end (nothing was written past it)


def data_bytes(fd: int, end: int, position: int = 0) -> int:
    """Bytes of data (not holes) from `position` to `end`: what `copy_range` or `copy_used` writes for them."""
    return sum(stop - start for start, stop in data_extents(fd, end, position))


def data_extents(fd: int, end: int, position: int = 0) -> Iterator[tuple[int, int]]:
    """(start, stop) of each extent of data from `position` to `end`; one extent for all when holes cannot be
    asked for."""
    while position < end:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
            stop = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                return
            yield position, end  # no SEEK_DATA here: copy the rest as it is
            return
        except AttributeError:  # a platform without SEEK_DATA
            yield position, end
            return
        if start >= end:
            return
        yield start, min(stop, end)
        position = stop
