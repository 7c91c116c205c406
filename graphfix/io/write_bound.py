"""How many bytes of external data a changed model may write: no more than its input's data files hold.

A changed model's data file is written tensor by tensor from the input's data files (`graphfix.io.externalized`).
Nothing in ONNX stops many tensors from naming the same bytes: a few KB of graph whose 1,000 initializers all read
one 4 MB region came out as 4,000 MB (security review h148). ONNX's own writer never makes tensors overlap, so:

- tensors naming the very same bytes (location, offset and length) are written once and share them in the output;
- holes stay holes (`graphfix.io.held.copy_range`): a weight in a sparse file costs its data extents, not its length;
- what is still written, the data extents of each distinct range, may exceed the data extents of the data files
  it comes from (what their unchanged copy takes) by WRITE_SHARE of them plus WRITE_MARGIN bytes, no more. Tensors
  that do not overlap never exceed it; the margin is room for a fix that copies a weight it changes (a fix adds
  small constants, inline, which are not counted here). Past it the repair is refused before anything is written.

Data extents (SEEK_DATA/SEEK_HOLE), not `st_blocks`, measure both sides: a file system that compresses (ZFS)
reports fewer blocks than the bytes a copy writes, and would have refused healthy models.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from graphfix.core.errors import InputError
from graphfix.io.external_data import ExternalRef, data_file, external_ref, is_stub, model_tensors
from graphfix.io.held import data_bytes

WRITE_SHARE = 0.1  # of the input's data bytes
WRITE_MARGIN = 64 << 20  # bytes; a test builds an input just past WRITE_MARGIN to be refused

Range = tuple[str, int, int]  # (location, offset, length): the bytes one or more tensors name


def distinct_ranges(proto: onnx.ModelProto) -> dict[Range, ExternalRef]:
    """Each distinct byte range the model's external tensors name (stubs excluded), with the first tensor naming
    it, in the order the writer meets them."""
    ranges: dict[Range, ExternalRef] = {}
    for where, tensor in model_tensors(proto):
        if is_stub(tensor):
            continue
        ref = external_ref(tensor, where)
        if ref is not None:
            ranges.setdefault((ref.location, ref.offset, ref.length), ref)
    return ranges


def check_write_bound(proto: onnx.ModelProto, source_dir: Path | None) -> None:
    """Refuse (InputError, one line) a model whose distinct external ranges would write more data than the data
    files they come from hold, beyond the margin (see the module's docstring). Reads no weight: `lseek` only."""
    ranges = distinct_ranges(proto)
    if not ranges or source_dir is None:
        return  # nothing to copy; without a folder the writer refuses external data itself
    written, files = 0, {}
    for (location, offset, length), ref in ranges.items():
        held = data_file(source_dir, location, ref.where)
        files[held.path] = held  # by the file, not its spelling: `w.bin`, `./w.bin`, `.//w.bin` hold it once
        written += data_bytes(held.fd, offset + length, offset)  # (red team 151: 60 spellings, 60 times)
    holds = sum(data_bytes(held.fd, held.size) for held in files.values())
    limit = int(holds * (1 + WRITE_SHARE)) + WRITE_MARGIN
    if written > limit:
        raise InputError(
            f"its external tensors overlap: they would write {written:,} bytes of data from files holding "
            f"{holds:,} ({len(ranges):,} byte ranges, at most {limit:,} allowed); ONNX's writer never overlaps "
            "tensors: give each tensor bytes of its own; nothing written")
