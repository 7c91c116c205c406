"""External data: where a model's weights live, whether that place is safe, and reading them lazily.

Models over 2 GB keep their weights in files beside the `.onnx` (`model.onnx.data`). graphfix never reads those
bytes unless a rule or the runtime needs them. Every tensor that can carry external data is checked the same way
(initializers, both halves of sparse initializers, tensors in node attributes, in subgraphs and in model-local
functions), with `stat` only, so `--static` checks them too without reading a byte:

- fields: only `location`, `offset`, `length`, `checksum`, each once; offset and length non-negative integers;
  length equal to the tensor's byte size;
- location: a relative path of sane length inside the model's folder: no absolute path, drive, UNC, URL, `~`,
  `..` or NUL, no symbolic or hard link leading elsewhere (CVE-2022-25882, CVE-2024-27318, CVE-2025-51480,
  CVE-2026-27489), a regular file (no FIFO, device or folder) holding offset + length bytes.

Locations resolve against the model's folder only: a model with external data and no folder is refused.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper

from graphfix.core.errors import InputError
from graphfix.io.held import HeldFile, held
from graphfix.io.protos import lift_initializers

KNOWN_KEYS = ("location", "offset", "length", "checksum")
MAX_LOCATION_BYTES = 1024  # far below PATH_MAX; weights files have short names
MAX_COMPONENT_BYTES = 255  # NAME_MAX on Linux, macOS and Windows
SUB_BYTE_BITS = {TensorProto.INT4: 4, TensorProto.UINT4: 4}
for _name, _bits in (("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2)):
    if hasattr(TensorProto, _name):
        SUB_BYTE_BITS[getattr(TensorProto, _name)] = _bits
DIGITS = re.compile(r"[0-9]+")
STUB_LOCATION = "__graphfix_weights_not_loaded__"  # the location of a stub, which names no file


@dataclass(frozen=True)
class ExternalRef:
    """Where one tensor's bytes are stored outside the protobuf."""

    tensor: str
    location: str
    offset: int
    length: int  # bytes the tensor needs
    where: str = "tensor"  # how the message names it: "tensor 'w'", "sparse initializer 'w' values", ...

    def path(self, base_dir: Path) -> Path:
        return base_dir / self.location


def iter_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every TensorProto of a graph: initializers, sparse initializers (values and indices) and tensors in node
    attributes, subgraphs included."""
    for _where, tensor in _graph_tensors(graph, ""):
        yield tensor


def model_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, TensorProto]]:
    """(where, tensor) for every TensorProto of a model: its graph (its own initializers first, in order:
    `without_external_values` tells them apart by their place), its model-local functions (their nodes and the
    defaults of their attributes, which a node's `ref_attr_name` reads) and its training graphs (onnxruntime
    reads none of them by path without the checks here)."""
    yield from _graph_tensors(model.graph, "")
    for function in model.functions:
        context = f" in function '{function.domain}.{function.name}'"
        for node in function.node:
            yield from _node_tensors(node, context)
        for attr in function.attribute_proto:
            yield from _attribute_tensors(attr, f"default of attribute '{attr.name}'{context}", context)
    for index, training in enumerate(model.training_info):
        for name, graph in (("initialization", training.initialization), ("algorithm", training.algorithm)):
            yield from _graph_tensors(graph, f" in training info {index}'s {name} graph")


def _graph_tensors(graph: onnx.GraphProto, context: str) -> Iterator[tuple[str, TensorProto]]:
    for tensor in graph.initializer:
        yield f"tensor '{tensor.name}'{context}", tensor
    for sparse in graph.sparse_initializer:
        yield from _sparse_tensors(sparse, f"sparse initializer '{sparse.values.name}'{context}")
    for node in graph.node:
        yield from _node_tensors(node, context)


def _sparse_tensors(sparse: onnx.SparseTensorProto, where: str) -> Iterator[tuple[str, TensorProto]]:
    yield f"{where} values", sparse.values
    yield f"{where} indices", sparse.indices


def _node_tensors(node: onnx.NodeProto, context: str) -> Iterator[tuple[str, TensorProto]]:
    for attr in node.attribute:
        if attr.ref_attr_name and not _holds_values(attr):
            continue  # a function's node reads the function's attribute: no value of its own
        yield from _attribute_tensors(
            attr, f"tensor in attribute '{attr.name}' of node '{node.name or node.op_type}'{context}",
            f" in a subgraph of node '{node.name or node.op_type}'{context}")


def _holds_values(attr: onnx.AttributeProto) -> bool:
    """Whether an attribute holds a tensor, a sparse tensor or a graph of its own: one that also names a function's
    attribute (`ref_attr_name`) is still read by onnxruntime where no function encloses it, so it is checked."""
    return any(attr.HasField(name) for name in ("t", "sparse_tensor", "g")) or bool(
        attr.tensors or attr.sparse_tensors or attr.graphs)


def _attribute_tensors(attr: onnx.AttributeProto, where: str, inside: str) -> Iterator[tuple[str, TensorProto]]:
    """The tensors an attribute holds: `where` names them, `inside` the subgraphs it holds."""
    if attr.type == AttributeProto.TENSOR:
        yield where, attr.t
    elif attr.type == AttributeProto.TENSORS:
        for tensor in attr.tensors:
            yield where, tensor
    elif attr.type == AttributeProto.SPARSE_TENSOR:
        yield from _sparse_tensors(attr.sparse_tensor, f"sparse {where}")
    elif attr.type == AttributeProto.SPARSE_TENSORS:
        for sparse in attr.sparse_tensors:
            yield from _sparse_tensors(sparse, f"sparse {where}")
    elif attr.type == AttributeProto.GRAPH:
        yield from _graph_tensors(attr.g, inside)
    elif attr.type == AttributeProto.GRAPHS:
        for sub in attr.graphs:
            yield from _graph_tensors(sub, inside)


def element_count(tensor: TensorProto) -> int:
    return math.prod(tensor.dims)  # Python ints: dims of 2**40 do not overflow


def tensor_nbytes(tensor: TensorProto) -> int:
    """Bytes a tensor's values occupy in raw form, from its dims and type alone (0 for strings)."""
    if tensor.data_type == TensorProto.STRING:
        return 0
    count = element_count(tensor)
    bits = SUB_BYTE_BITS.get(tensor.data_type)
    if bits is not None:
        return (count * bits + 7) // 8
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def external_ref(tensor: TensorProto, where: str | None = None) -> ExternalRef | None:
    """The tensor's external-data reference, or None when its values are inline. Raises InputError on fields
    that are no valid reference (unknown or repeated keys, offsets and lengths that are not byte counts)."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return None
    where = where or f"tensor '{tensor.name}'"
    entries: dict[str, str] = {}
    for entry in tensor.external_data:
        if entry.key not in KNOWN_KEYS:
            raise InputError(f"{where}: unknown external-data field '{entry.key[:40]}'")
        if entry.key in entries:
            raise InputError(f"{where}: external-data field '{entry.key}' is given twice")
        entries[entry.key] = entry.value
    if tensor.data_type == TensorProto.STRING:
        raise InputError(f"{where}: string tensors cannot keep their values in external data")
    nbytes = tensor_nbytes(tensor)
    offset = _byte_count(entries.get("offset", "0"), "offset", where)
    length = _byte_count(entries["length"], "length", where) if "length" in entries else nbytes
    if length != nbytes:
        raise InputError(f"{where}: external-data length is {length} bytes, but dims {list(tensor.dims)} of "
                         f"{_type_name(tensor.data_type)} need {nbytes}")
    return ExternalRef(tensor.name, entries.get("location", ""), offset, length, where)


def _byte_count(text: str, field: str, where: str) -> int:
    if not DIGITS.fullmatch(text) or len(text) > 19:
        raise InputError(f"{where}: external-data {field} '{text[:40]}' is not a non-negative integer")
    return int(text)


def _type_name(data_type: int) -> str:
    return helper.tensor_dtype_to_string(data_type).removeprefix("TensorProto.").lower()


def external_refs(model: onnx.ModelProto) -> list[ExternalRef]:
    """Every external reference of the model (stubs of graphfix's own light models excluded)."""
    refs = []
    for where, tensor in model_tensors(model):
        ref = external_ref(tensor, where)
        if ref is not None and not _is_stub(ref):
            refs.append(ref)
    return refs


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == TensorProto.EXTERNAL and not is_stub(t) for _w, t in model_tensors(model))


def is_stub(tensor: TensorProto) -> bool:
    """Whether the tensor is a stub: a weight graphfix keeps apart (`graphfix.io.weights`), no external data."""
    return tensor.data_location == TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == STUB_LOCATION for e in tensor.external_data)


def _is_stub(ref: ExternalRef) -> bool:
    return ref.location == STUB_LOCATION


def unsafe_location_reason(location: str, base_dir: Path) -> str | None:
    """Why an external-data location may not be used, or None when it names a regular file inside base_dir.
    Only `stat`s: nothing is opened."""
    reason = _location_text_reason(location)
    if reason:
        return reason
    full = base_dir / location
    try:
        real = os.path.realpath(full)
        if _outside(base_dir, real):
            return f"points outside the model's folder through a symbolic link ('{location}' -> '{real}')"
        if _hidden_inside(base_dir, real):
            return _hidden(f"{location}' -> '{real}")
        info = os.stat(full)
    except FileNotFoundError:
        return None  # missing: reported with the file's size check
    except (OSError, ValueError) as exc:
        return f"has a location that cannot be used ('{location[:80]}': {exc.strerror or exc})"
    if not stat.S_ISREG(info.st_mode):
        return f"has a location that is not a regular file ('{location}')"
    if info.st_nlink > 1:
        return f"is a hard link ('{location}'); copy the file instead of linking it"
    return None


def _hidden(location: str) -> str:
    """Security review 148: a model committed at a repository's root read `.git/config`, where a CI checkout keeps
    its token, as an int64 shape, and the findings printed its bytes as numbers (no log masking sees them)."""
    return (f"names a hidden file or folder ('{location}'): graphfix reads no dotfile as weights (a repository's "
            "`.git/config`, `.env` or `.ssh` hold credentials); rename the data file")


def _hidden_inside(base_dir: Path, real: str) -> bool:
    """Whether the resolved path, inside the model's folder, passes through a hidden file or folder (a link named
    `w.bin` to `.git/config`). Not asked of a hub cache's blobs, outside the snapshot folder by design."""
    root = os.path.realpath(base_dir)
    if os.path.commonpath([root, real]) != root:
        return False
    return any(part.startswith(".") for part in PurePosixPath(os.path.relpath(real, root)).parts if part != ".")


def _outside(base_dir: Path, real: str) -> bool:
    """Whether the resolved path `real` lies outside the model's folder (and outside its hub repository's blobs)."""
    root = os.path.realpath(base_dir)
    return os.path.commonpath([root, real]) != root and not _in_hub_repository(base_dir, real)


def _in_hub_repository(base_dir: Path, real: str) -> bool:
    """True when the model sits in a Hugging Face hub cache snapshot (`models--org--name/snapshots/REV/`) and the
    link resolves into the `blobs/` of that same cached repository, as the hub cache links every file."""
    snapshot = Path(os.path.realpath(base_dir))
    repository = snapshot.parent.parent
    if snapshot.parent.name != "snapshots" or not repository.name.startswith(("models--", "datasets--", "spaces--")):
        return False
    blobs = str(repository / "blobs")
    return os.path.commonpath([blobs, real]) == blobs


def _location_text_reason(location: str) -> str | None:
    if not location:
        return "has an empty location"
    if "\0" in location:
        return "has a location with a NUL byte"
    encoded = location.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_LOCATION_BYTES:
        return f"has a location of {len(encoded)} bytes (at most {MAX_LOCATION_BYTES})"
    if os.path.isabs(location) or PureWindowsPath(location).is_absolute() or location.startswith(("\\", "/")):
        return f"uses the absolute path '{location}'"
    if ":" in location:
        return f"has a drive or URL in its location ('{location}')"
    parts = PurePosixPath(location.replace("\\", "/")).parts
    if ".." in parts:
        return f"uses '..' to leave the model's folder ('{location}')"
    if location.startswith("~"):
        return f"has a home-folder location ('{location}')"
    if any(part.startswith(".") for part in parts):
        return _hidden(location)
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES for part in parts):
        return f"has a location with a name over {MAX_COMPONENT_BYTES} bytes"
    return None


def check_external_data(model: onnx.ModelProto, base_dir: Path | None, model_name: str) -> list[ExternalRef]:
    """Refuse unsafe, missing or short external data; return the references. Reads no weights (stat only): a data
    file is opened at its first read (`data_file`), checked again then on its descriptor, and held for every later
    read. Without a folder (an in-memory model), external data is refused: nothing else may resolve it."""
    try:
        refs = external_refs(model)
    except InputError as exc:
        raise InputError(f"{model_name}: {exc}") from None
    if refs and base_dir is None:
        raise InputError(f"{model_name}: {refs[0].where} keeps its values in external data, but no folder was "
                         "given to read it from")
    sizes: dict[str, int] = {}
    reasons: dict[str, str | None] = {}  # once per location: a Llama's hundreds of tensors share one or two files
    for ref in refs:
        if ref.location not in reasons:
            reasons[ref.location] = unsafe_location_reason(ref.location, base_dir)
        reason = reasons[ref.location]
        if reason:
            raise InputError(f"{model_name}: {ref.where} {reason}; refusing to read outside the model's folder")
        if ref.location not in sizes:
            path = ref.path(base_dir)
            if not path.is_file():
                raise InputError(f"{model_name}: external data file '{ref.location}' for {ref.where} does not exist")
            sizes[ref.location] = path.stat().st_size
        end = ref.offset + ref.length
        if end > sizes[ref.location]:
            raise InputError(
                f"{model_name}: external data file '{ref.location}' is {sizes[ref.location]} bytes but {ref.where} "
                f"needs bytes {ref.offset}..{end} (the file is truncated)"
            )
    return refs


def data_file(base_dir: Path, location: str, where: str = "tensor") -> HeldFile:
    """The data file at `location`, as the loaded model holds it open; a file nothing holds yet is checked as
    loading checks it, then opened once and held."""
    files = held(base_dir)
    found = files.get(location)
    if found is not None:
        return found
    reason = unsafe_location_reason(location, base_dir)
    if reason:
        raise InputError(f"{where} {reason}; refusing to read outside the model's folder")
    opened = files.open(location, f"external data file '{location}' for {where}",
                        allowed=lambda real: not _outside(base_dir, real))  # a link swapped in since the check
    if opened.links > 1:  # a hard link made since the check
        files.drop(location)
        raise InputError(f"{where} is a hard link ('{location}'); refusing to read outside the model's folder")
    return opened


def read_external(tensor: TensorProto, base_dir: Path) -> np.ndarray:
    """A tensor's values, memory-mapped from the descriptor of its external-data file (nothing is copied until
    used; read-only)."""
    ref = external_ref(tensor)
    assert ref is not None, f"{tensor.name} has no external data"
    np_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    shape = tuple(tensor.dims)
    count = element_count(tensor)
    if count == 0:
        return np.zeros(shape, dtype=np_dtype)
    source = data_file(base_dir, ref.location, ref.where)
    if ref.offset + count * np_dtype.itemsize > source.size:
        raise InputError(f"external data file '{ref.location}' is {source.size} bytes but {ref.where} needs bytes "
                         f"{ref.offset}..{ref.offset + count * np_dtype.itemsize} (the file is truncated)")
    return np.frombuffer(source.mapped(), dtype=np_dtype, count=count, offset=ref.offset).reshape(shape)


def tensor_values(tensor: TensorProto, base_dir: Path | None) -> np.ndarray:
    """A TensorProto's values, reading external data lazily from base_dir. A stub of a light model
    (graphfix.io.weights) has no bytes of its own: its values are read through its weights map (`attach`)."""
    if is_stub(tensor):
        raise ValueError(f"weight '{tensor.name}' is kept apart from its light model: read it through the "
                         "weights map (graphfix.io.weights.attach), not from the placeholder")
    if tensor.data_location == TensorProto.EXTERNAL:
        if base_dir is None:
            raise InputError(f"tensor '{tensor.name}' keeps its values in external data, but no folder was given")
        return read_external(tensor, base_dir)
    return onnx.numpy_helper.to_array(tensor)


def without_external_values(model: onnx.ModelProto) -> tuple[onnx.ModelProto, frozenset[str]]:
    """The model as a library that resolves external-data locations itself may see it (onnx's `numpy_helper`
    resolves them against the working directory): its initializers kept in external data (stubs too) become graph
    inputs of the same name, type and dims, so their values are unknown to it. Returns (model, lifted names); the
    model itself when nothing is external (no copy). Raises ValueError for an external tensor elsewhere (a node
    attribute, a subgraph, a sparse or function tensor): nothing that names a file may be handed over."""
    # the graph's own initializers come first in `model_tensors`: told apart by their place, for protobuf gives a
    # message a new Python object at each read and `id()` told a top-level weight from a nested one by chance (a
    # ConvNeXt's stubs were taken for nested ones and symbolic inference was skipped, helper 131)
    top = len(model.graph.initializer)
    lifted = []
    for index, (where, tensor) in enumerate(model_tensors(model)):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        if index >= top:
            raise ValueError(f"{where} keeps its values in external data")
        lifted.append(tensor.name)
    if not lifted:
        return model, frozenset()
    inputs = {value.name for value in model.graph.input}
    return lift_initializers(model, set(lifted)), frozenset(lifted) - inputs
