"""The model file a write replaces: which file it was and the external data files it reads, read without
following a link and, where its wire format says it names no data file, without parsing it. `graphfix.io.saving`
names the replaced model's data after a commit (kept: graphfix deletes only what it made in the same run) and
writes the new data under names it does not read.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import onnx

from graphfix.io.external_data import external_ref, model_tensors
from graphfix.io.wire import external_locations

# An external data reference is a StringStringEntryProto with key "location" (field 1, 8 bytes): a file without
# these bytes references no external data.
LOCATION_ENTRY = b"\x0a\x08location"


@dataclass(frozen=True)
class Existing:
    """A file a commit will replace: which it was (inode, size, mtime) and the data files it read."""

    signature: tuple[int, int, int] | None
    data_files: tuple[Path, ...]

    @classmethod
    def of(cls, model: Path, at: int | None = None) -> Existing:
        """`at`: a descriptor of the model's folder, read instead of its path."""
        signature = _signature(model, at)
        return cls(signature, tuple(_data_files(model, at)) if signature else ())

    def data_files_now(self, model: Path, at: int | None = None) -> tuple[Path, ...]:
        """The data files, read again if the file changed since; `at`: a descriptor of the model's folder, which
        the file is read through (a commit holds it: a link swapped in for the folder leads elsewhere)."""
        return self.data_files if _signature(model, at) == self.signature else tuple(_data_files(model, at))


def _signature(path: Path, at: int | None = None) -> tuple[int, int, int] | None:
    try:
        info = path.lstat() if at is None else os.stat(path.name, dir_fd=at, follow_symlinks=False)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns) if stat.S_ISREG(info.st_mode) else None


def _data_files(model: Path, at: int | None = None) -> list[Path]:
    """The external data files an existing model file reads (none when it does not exist or cannot be read)."""
    return [model.parent / location for location in sorted(_locations(model, at)) if "/" not in location
            and "\\" not in location and location not in (".", "..")]


def files_read_by(model: Path, folder: Path | None = None) -> list[Path]:
    """The model file and every external data file it names (in `folder`, by default the model's, or below),
    without reading them."""
    folder = model.parent if folder is None else folder
    return [model, *(folder / location for location in sorted(_locations(model)))]


def _locations(model: Path, at: int | None = None) -> set[str]:
    """The data files (`location`) a model file's tensors name, as protobuf's parser reads them; none when it is a
    link, not a file, or not a model the parser reads. Its wire format is walked first (graphfix.io.wire, no tensor
    read): where the walk finds no tensor in external data (a big inline model: 10 ms instead of 0.5 s), that is
    the answer; where it finds some, or cannot tell, the file is parsed, from the descriptor opened here."""
    try:
        fd = os.open(model if at is None else model.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=at)
    except OSError:
        return set()
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return set()
        found = external_locations(fd, info.st_size)
        if found is not None and not found - {""}:
            return set()
        if found is None and not _holds(fd, info.st_size, LOCATION_ENTRY):
            return set()
        return _parsed_locations(fd, info.st_size) - {""}
    finally:
        os.close(fd)


def _holds(fd: int, size: int, needle: bytes, chunk: int = 16 << 20) -> bool:
    """Whether the file open as `fd` holds these bytes, read in chunks that overlap by the needle's length."""
    step = chunk - len(needle)
    return any(needle in os.pread(fd, chunk, offset) for offset in range(0, max(size, 1), step))


def _parsed_locations(fd: int, size: int) -> set[str]:
    try:
        proto = onnx.ModelProto()
        proto.ParseFromString(os.pread(fd, size, 0))
        return {ref.location for ref in (external_ref(t) for _, t in model_tensors(proto)) if ref is not None}
    except Exception:  # not a model we can read (or no valid reference): it names nothing
        return set()
