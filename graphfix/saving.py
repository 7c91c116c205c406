"""Writing models atomically, with external data beside the output.

A model is first *staged*: written with its external data into a hidden temporary folder next to the
destination, where onnxruntime can validate it from disk. Only `commit()` moves the files into place (one
`os.replace` each, data before model), so a reader never sees a half-written model and a failed validation
leaves nothing behind. Weights kept in the source's external data are copied in chunks, never loaded whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from graphfix.external_data import external_ref, iter_tensors

PROTOBUF_LIMIT = 2**31 - 1
EXTERNALIZE_MIN_BYTES = 1024  # smaller tensors stay inline when a model is split
ALIGNMENT = 4096  # onnxruntime memory-maps aligned tensors
COPY_CHUNK = 64 << 20


@dataclass
class StagedModel:
    """A model written to a temporary folder beside its destination, waiting for `commit()` or `discard()`."""

    temp_dir: Path
    destination: Path
    data_name: str | None

    @property
    def path(self) -> Path:
        return self.temp_dir / self.destination.name

    def commit(self) -> Path:
        if self.data_name:
            os.replace(self.temp_dir / self.data_name, self.destination.parent / self.data_name)
        os.replace(self.path, self.destination)
        self.discard()
        return self.destination

    def discard(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def needs_external_data(proto: onnx.ModelProto) -> bool:
    """True when the model keeps weights outside the protobuf or would not fit in one."""
    inline = 0
    for tensor in iter_tensors(proto.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            return True
        inline += len(tensor.raw_data)
    return inline > PROTOBUF_LIMIT - (64 << 20)


def stage_model(proto: onnx.ModelProto, destination: str | Path, source_dir: Path | None = None) -> StagedModel:
    """Write `proto` into a temporary folder beside `destination`; external data goes to `<name>.data`."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".graphfix-tmp", dir=destination.parent))
    staged = StagedModel(temp_dir, destination, None)
    try:
        if needs_external_data(proto):
            staged.data_name = destination.name + ".data"
            proto = _with_external_data(proto, temp_dir / staged.data_name, source_dir)
        with open(staged.path, "wb") as f:
            f.write(proto.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        staged.discard()
        raise
    return staged


def save_model(proto: onnx.ModelProto, destination: str | Path, source_dir: Path | None = None) -> Path:
    """Stage and commit in one step."""
    return stage_model(proto, destination, source_dir).commit()


def _with_external_data(proto: onnx.ModelProto, data_path: Path, source_dir: Path | None) -> onnx.ModelProto:
    """A copy of `proto` whose large tensors point into `data_path`, which this writes."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    with open(data_path, "wb") as data:
        for tensor in iter_tensors(out.graph):
            ref = external_ref(tensor)
            if ref is None and len(tensor.raw_data) < EXTERNALIZE_MIN_BYTES:
                continue
            _pad_to_alignment(data)
            offset = data.tell()
            if ref is not None:
                if source_dir is None:
                    raise ValueError(f"tensor '{tensor.name}' is external but the source folder is unknown")
                _copy_range(ref.path(source_dir), ref.offset, ref.length, data)
                length = ref.length
            else:
                data.write(tensor.raw_data)
                length = len(tensor.raw_data)
                tensor.ClearField("raw_data")
            del tensor.external_data[:]
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
        data.flush()
        os.fsync(data.fileno())
    return out


def _pad_to_alignment(f) -> None:
    pos = f.tell()
    if pos % ALIGNMENT:
        f.write(b"\0" * (ALIGNMENT - pos % ALIGNMENT))


def _copy_range(src: Path, offset: int, length: int, dst) -> None:
    with open(src, "rb") as f:
        f.seek(offset)
        remaining = length
        while remaining:
            chunk = f.read(min(COPY_CHUNK, remaining))
            if not chunk:
                raise OSError(f"{src} ended before {length} bytes from offset {offset} were read")
            dst.write(chunk)
            remaining -= len(chunk)
