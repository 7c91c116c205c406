"""`HeldFile.copy_to`: the kernel copies (copy_file_range) where it can, this process the rest; either way the
output gets exactly the bytes asked for, at its own position."""

from __future__ import annotations

import errno
import os

import pytest

from graphfix.io.held import HeldFile

DATA = bytes(range(256)) * 4096  # 1 MiB that no shift or truncation leaves equal


def copied(tmp_path, offset: int, length: int) -> bytes:
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    out_path = tmp_path / "out.bin"
    with open(out_path, "wb") as out:
        out.write(b"head")  # buffered, not yet flushed: the copy must land after it
        HeldFile(src, "src").copy_to(out, offset, length)
        out.write(b"tail")  # and the file object's position must be after the copy
    return out_path.read_bytes()


@pytest.mark.parametrize("offset, length", [(0, len(DATA)), (13, 100_003), (len(DATA) - 7, 7), (5, 0)])
def test_copy_lands_at_the_output_position(tmp_path, offset, length):
    assert copied(tmp_path, offset, length) == b"head" + DATA[offset:offset + length] + b"tail"


def test_where_the_kernel_cannot_copy_this_process_does(tmp_path, monkeypatch):
    def refused(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refused)
    assert copied(tmp_path, 11, 300_000) == b"head" + DATA[11:300_011] + b"tail"


def test_a_copy_the_kernel_stops_short_is_finished_here(tmp_path, monkeypatch):
    real = os.copy_file_range
    calls = []

    def short(src, dst, count, offset_src, offset_dst):
        calls.append(count)
        return real(src, dst, min(count, 4096), offset_src, offset_dst) if len(calls) == 1 else 0

    monkeypatch.setattr(os, "copy_file_range", short)
    assert copied(tmp_path, 3, 200_000) == b"head" + DATA[3:200_003] + b"tail"
    assert len(calls) == 2


def test_a_source_shorter_than_its_tensors_is_an_error(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    held = HeldFile(src, "src")
    os.truncate(src, 1000)  # shrunk after it was checked
    with open(tmp_path / "out.bin", "wb") as out, pytest.raises(OSError, match="ended before"):
        held.copy_to(out, 0, len(DATA))


def test_an_in_memory_output_gets_the_bytes_too(tmp_path):
    import io

    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    out = io.BytesIO(b"head")
    out.seek(4)
    HeldFile(src, "src").copy_to(out, 7, 70_000)
    assert out.getvalue() == b"head" + DATA[7:70_007]
