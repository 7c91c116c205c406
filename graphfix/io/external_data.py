"""External data: where a model's weights live, whether that place is safe, and reading them lazily.

Models over 2 GB keep their weights in files beside the `.onnx` (`model.onnx.data`). graphfix never reads those
bytes unless a rule or the runtime needs them, and it refuses locations that leave the model's folder: absolute
paths, `..` components, and symbolic or hard links pointing elsewhere (the attacks behind CVE-2022-25882,
CVE-2024-27318, CVE-2025-51480 and CVE-2026-27489).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import onnx
from onnx import TensorProto, helper

from graphfix.core.errors import InputError


@dataclass(frozen=True)
class ExternalRef:
    """Where one tensor's bytes are stored outside the protobuf."""

    tensor: str
    location: str
    offset: int
    length: int  # bytes the tensor needs

    def path(self, base_dir: Path) -> Path:
        return base_dir / self.location


def iter_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every TensorProto of a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_tensors(sub)


def tensor_nbytes(tensor: TensorProto) -> int:
    """Bytes a tensor's values occupy in raw form, from its dims and type alone."""
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    if tensor.data_type == TensorProto.STRING:
        return 0
    np_dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    bits = {TensorProto.INT4: 4, TensorProto.UINT4: 4}.get(tensor.data_type)
    if bits is not None or getattr(TensorProto, "FLOAT4E2M1", -1) == tensor.data_type:
        return (count + 1) // 2
    return count * np.dtype(np_dtype).itemsize


def external_ref(tensor: TensorProto) -> ExternalRef | None:
    """The tensor's external-data reference, or None when its values are inline."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return None
    entries = {e.key: e.value for e in tensor.external_data}
    length = int(entries["length"]) if "length" in entries else tensor_nbytes(tensor)
    return ExternalRef(tensor.name, entries.get("location", ""), int(entries.get("offset", 0) or 0), length)


def external_refs(model: onnx.ModelProto) -> list[ExternalRef]:
    return [ref for t in iter_tensors(model.graph) if (ref := external_ref(t)) is not None]


def unsafe_location_reason(location: str, base_dir: Path) -> str | None:
    """Why an external-data location may not be used, or None when it is inside base_dir."""
    if not location:
        return "has an empty location"
    if os.path.isabs(location) or PureWindowsPath(location).is_absolute() or PureWindowsPath(location).drive:
        return f"uses the absolute path '{location}'"
    parts = PurePosixPath(location.replace("\\", "/")).parts
    if ".." in parts:
        return f"uses '..' to leave the model's folder ('{location}')"
    full = base_dir / location
    root = os.path.realpath(base_dir)
    real = os.path.realpath(full)
    if os.path.commonpath([root, real]) != root and not _in_hub_repository(base_dir, real):
        return f"points outside the model's folder through a symbolic link ('{location}' -> '{real}')"
    if full.exists() and full.is_file() and os.stat(full).st_nlink > 1:
        return f"is a hard link ('{location}'); copy the file instead of linking it"
    return None


def _in_hub_repository(base_dir: Path, real: str) -> bool:
    """True when the model sits in a Hugging Face hub cache snapshot (`models--org--name/snapshots/REV/`) and the
    link resolves into the `blobs/` of that same cached repository, as the hub cache links every file."""
    snapshot = Path(os.path.realpath(base_dir))
    repository = snapshot.parent.parent
    if snapshot.parent.name != "snapshots" or not repository.name.startswith(("models--", "datasets--", "spaces--")):
        return False
    blobs = str(repository / "blobs")
    return os.path.commonpath([blobs, real]) == blobs


def check_external_data(model: onnx.ModelProto, base_dir: Path, model_name: str) -> list[ExternalRef]:
    """Refuse unsafe, missing or short external data; return the references. Reads no weights (stat only)."""
    refs = external_refs(model)
    sizes: dict[str, int] = {}
    for ref in refs:
        reason = unsafe_location_reason(ref.location, base_dir)
        if reason:
            raise InputError(f"{model_name}: tensor '{ref.tensor}' {reason}; refusing to read outside the model's "
                             "folder")
        if ref.location not in sizes:
            path = ref.path(base_dir)
            if not path.is_file():
                raise InputError(
                    f"{model_name}: external data file '{ref.location}' for tensor '{ref.tensor}' does not exist"
                )
            sizes[ref.location] = path.stat().st_size
        end = ref.offset + ref.length
        if end > sizes[ref.location]:
            raise InputError(
                f"{model_name}: external data file '{ref.location}' is {sizes[ref.location]} bytes but tensor "
                f"'{ref.tensor}' needs bytes {ref.offset}..{end} (the file is truncated)"
            )
    return refs


def read_external(tensor: TensorProto, base_dir: Path) -> np.ndarray:
    """A tensor's values, memory-mapped from its external-data file (nothing is copied until used)."""
    ref = external_ref(tensor)
    assert ref is not None, f"{tensor.name} has no external data"
    np_dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    shape = tuple(tensor.dims)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count == 0:
        return np.zeros(shape, dtype=np_dtype)
    data = np.memmap(ref.path(base_dir), dtype=np_dtype, mode="r", offset=ref.offset, shape=(count,))
    return data.reshape(shape)


def tensor_values(tensor: TensorProto, base_dir: Path | None) -> np.ndarray:
    """A TensorProto's values, reading external data lazily from base_dir."""
    if tensor.data_location == TensorProto.EXTERNAL:
        if base_dir is None:
            raise InputError(f"tensor '{tensor.name}' keeps its values in external data, but no folder was given")
        return read_external(tensor, base_dir)
    return onnx.numpy_helper.to_array(tensor)
