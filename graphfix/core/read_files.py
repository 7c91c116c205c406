"""The files this run read besides its models — a `--input` array, a `--fill @x.npy`, the configuration and the
arrays it names — by device and inode, as opened: no output of the same run may replace one (helper 108:
`repair m.onnx --input x=x.npy -o x.npy` wrote the model over the array, and `--output-file pyproject.toml`
the report over the configuration the run read). The models and their data are the outputs' own business
(`graphfix.io.targets.input_files`: `--in-place` may replace a model, never anything here)."""

from __future__ import annotations

import os

_READ: dict[tuple[int, int], str] = {}


def note_read(fd: int, path: os.PathLike | str) -> None:
    """Remember the file open as `fd` (read from `path`) as one this run reads."""
    info = os.fstat(fd)
    _READ.setdefault((info.st_dev, info.st_ino), str(path))


def read_as(info: os.stat_result) -> str | None:
    """The path a file this run read was read from, where `info` is that file's; None otherwise."""
    return _READ.get((info.st_dev, info.st_ino))
