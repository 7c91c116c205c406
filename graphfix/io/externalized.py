"""A staged model's external data file: its large tensors, moved out of the graph and aligned for onnxruntime's
memory map, their bytes copied in chunks from the source's data files or from the weights of a light model (see
`graphfix.io.saving`, which writes the graph that points into it). Holes of the source stay holes, and tensors
naming the same source bytes share one copy (see `graphfix.io.write_bound`, which bounds the rest).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import onnx
from onnx import TensorProto

from graphfix.io.external_data import data_file, external_ref, is_stub, model_tensors, tensor_nbytes
from graphfix.io.held import copy_range
from graphfix.io.weights import Weights, resolve, weight_bytes

EXTERNALIZE_MIN_BYTES = 1024  # smaller tensors stay inline when a model is split
ALIGNMENT = 4096  # onnxruntime memory-maps aligned tensors


def with_external_data(proto: onnx.ModelProto, data: BinaryIO, location: str, source_dir: Path | None,
                       weights: Weights) -> onnx.ModelProto:
    """A copy of `proto` whose large tensors point into the data file `location`, which this writes to `data`
    (a new file: see `graphfix.io.staging.create`)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    written: dict[tuple[str, int, int], int] = {}  # each source range -> where it went: tensors sharing it share it
    for where, tensor in model_tensors(out):
        if is_stub(tensor):
            _pad_to_alignment(data)
            offset, raw = data.tell(), weight_bytes(resolve(tensor, weights))
            data.write(raw)
            _point_into(tensor, location, offset, len(raw))
            continue
        ref = external_ref(tensor)
        if ref is None and (not tensor.HasField("raw_data") or tensor_nbytes(tensor) < EXTERNALIZE_MIN_BYTES
                            or not _movable(where)):
            continue
        if ref is not None and (ref.location, ref.offset, ref.length) in written:
            _point_into(tensor, location, written[ref.location, ref.offset, ref.length], ref.length)
            continue
        _pad_to_alignment(data)
        offset = data.tell()
        if ref is not None:
            if source_dir is None:
                raise ValueError(f"tensor '{tensor.name}' is external but the source folder is unknown")
            copy_range(data_file(source_dir, ref.location, ref.where), data, ref.offset, ref.length)
            written[ref.location, ref.offset, ref.length] = offset
            length = ref.length
        else:
            data.write(tensor.raw_data)
            length = len(tensor.raw_data)
            tensor.ClearField("raw_data")
        _point_into(tensor, location, offset, length)
    return out


def _movable(where: str) -> bool:
    """Inline tensors of the graphs move to the data file; those of functions and sparse tensors stay (their
    external data would be valid ONNX, but runtimes handle it unevenly)."""
    return not where.startswith("sparse") and " in function '" not in where


def _point_into(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _pad_to_alignment(f) -> None:
    pos = f.tell()
    if pos % ALIGNMENT:
        f.write(b"\0" * (ALIGNMENT - pos % ALIGNMENT))
