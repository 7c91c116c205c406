"""Loading a model file, refusing every bad input with one clear line.

Weights in external data are never read here: the protobuf is parsed with `load_external_data=False` and the
external files are only checked for safety and size.
"""

from __future__ import annotations

import contextlib
import mmap
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from graphfix.core.errors import InputError
from graphfix.core.forked import in_child
from graphfix.io.budgets import BudgetExceeded, check_node_budget
from graphfix.io.external_data import STUB_LOCATION, ExternalRef, check_external_data, is_stub, model_tensors
from graphfix.io.held import DataFiles, HeldFile, held, open_model
from graphfix.io.mapped import MappedTensor, parse_light
from graphfix.io.tensor_checks import refuse_unsupported, run_onnx_checker, validate_model
from graphfix.io.weights import DETACH_MIN_BYTES

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
MIN_IR_VERSION = 3


@dataclass
class LoadedModel:
    """A parsed model and where it came from; external weights stay on disk."""

    proto: onnx.ModelProto
    path: Path | None
    external: list[ExternalRef] = field(default_factory=list)
    unexpanded: str = ""  # why its functions must not be expanded (over the node budget once they are), or ''
    files: DataFiles | None = None  # its external data files, held open for every later read (graphfix.io.held)
    model_file: HeldFile | None = None  # the model file as it was checked and parsed
    weights: dict[str, MappedTensor] = field(default_factory=dict)  # parsed light: its stubs' weights, in the file

    @property
    def base_dir(self) -> Path | None:
        return self.path.parent if self.path is not None else None

    @property
    def data_files(self) -> dict[Path, int]:
        """Each external data file, with the bytes its tensors reach (the most of offset + length)."""
        ends: dict[Path, int] = {}
        for ref in self.external:
            path = ref.path(self.base_dir)
            ends[path] = max(ends.get(path, 0), ref.offset + ref.length)
        return ends

    def changed_file(self) -> HeldFile | None:
        """The model file or a data file written since loading opened it. Its weights are read from those files
        for as long as a repair runs (mapped, copied into the output): bytes written meanwhile by another process
        were never validated."""
        files = [self.model_file] if self.model_file is not None else []
        files += self.files.opened() if self.files is not None else []
        return next((f for f in files if f.changed()), None)

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "<model>"


def load_model(path: str | Path, *, unexpanded: bool = False, light: bool = False) -> LoadedModel:
    """Parse `path`, check its structure, opset and external data; raise InputError naming what is wrong.

    A model whose functions expand past the node budget raises BudgetExceeded, unless the caller can analyse it
    `unexpanded` (its `unexpanded` then says why). `light`: in a forked worker, its large inline weights stay in
    the file, memory-mapped (graphfix.io.mapped): the proto holds stubs, `weights` what they stand for."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an .onnx model file")
    model_file = open_model(path)  # once, without blocking: a FIFO or a device is refused here
    size = model_file.size
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    head = model_file.read(0, min(size, 256))
    if head.startswith(LFS_POINTER_PREFIX):
        raise InputError(f"{path}: is a Git LFS pointer, not the model; fetch the weights with `git lfs pull`")
    try:
        proto, weights = _parse(model_file, light)  # the bytes checked, not the path read again
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InputError(f"{path}: {_parse_failure(head, size, exc)}") from exc
    check_structure(proto, str(path))
    _refuse_placeholders(proto, weights, str(path))
    note = _node_budget(proto, str(path), unexpanded)  # before the checks, which walk every node
    validate_model(proto, str(path))
    files = held(path.parent)
    external = check_external_data(proto, path.parent, str(path))
    refuse_unsupported(proto, str(path))
    run_onnx_checker(proto, str(path), None)  # the parsed bytes: the file is not read again
    return LoadedModel(proto, path, external, note, files, model_file, weights)


def _parse(model_file: HeldFile, light: bool = False) -> tuple[onnx.ModelProto, dict[str, MappedTensor]]:
    """The model, parsed from the held descriptor. In a forked worker it is parsed where it lies, memory-mapped:
    no copy of the file is read into memory first (on BERT-base 0.2 s and 435 MB less, #23). A file cut short
    meanwhile by another process then raises SIGBUS, which costs that worker only (`Crashed`: one line, exit 2).
    Elsewhere (the Python API, `--debug`), or where the file cannot be mapped, it is read into memory first, as
    `onnx.load` does. `light` (in a worker): parsed light where the walk reads the file (graphfix.io.mapped)."""
    if light and in_child():
        with contextlib.suppress(OSError, ValueError):  # a file the system maps no page of: parsed whole
            model_file.mapped()
            parsed = parse_light(model_file, DETACH_MIN_BYTES)
            if parsed is not None:
                return parsed
    proto = onnx.ModelProto()
    mapped = _mapped(model_file) if in_child() else None
    if mapped is None:
        decoded = proto.ParseFromString(model_file.read())
    else:
        with mapped, memoryview(mapped) as data:
            decoded = proto.ParseFromString(data)
    if decoded is not None and decoded != model_file.size:  # as onnx.load_model_from_string checks
        raise DecodeError(f"Protobuf decoding consumed too few bytes: {decoded} out of {model_file.size}")
    return proto, {}


def _refuse_placeholders(proto: onnx.ModelProto, weights: dict[str, MappedTensor], name: str) -> None:
    """A tensor of the file that names graphfix's placeholder as its location (the stubs of a light parse are the
    only ones, each standing for a weight in `weights`)."""
    for where, tensor in model_tensors(proto):
        if is_stub(tensor) and tensor.name not in weights:
            raise InputError(f"{name}: {where} names '{STUB_LOCATION}' as its external data, a name graphfix keeps "
                             "for itself; refusing to read it")


def _mapped(model_file: HeldFile) -> mmap.mmap | None:
    """The bytes checked (the size the file had when it was opened), mapped; None where the file system maps no
    file (sysfs, FUSE with direct I/O): it is read instead."""
    try:
        return mmap.mmap(model_file.fd, model_file.size, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None


def from_proto(proto: onnx.ModelProto, base_dir: Path | None = None, *, unexpanded: bool = False) -> LoadedModel:
    """Wrap an in-memory model (Python API); `base_dir` locates external data if it has any."""
    check_structure(proto, "<model>")
    note = _node_budget(proto, "<model>", unexpanded)
    validate_model(proto, "<model>")
    files = held(base_dir) if base_dir is not None else None
    external = check_external_data(proto, base_dir, "<model>")
    refuse_unsupported(proto, "<model>")
    run_onnx_checker(proto, "<model>", None)
    path = (base_dir / "model.onnx") if base_dir is not None else None
    return LoadedModel(proto, path, external, note, files)


def _node_budget(proto: onnx.ModelProto, name: str, unexpanded: bool) -> str:
    note = check_node_budget(proto, name)
    if note and not unexpanded:
        raise BudgetExceeded(f"{name}: {note}: not analysed (this command runs the model, which would expand them)")
    return note


def _parse_failure(head: bytes, size: int, exc: Exception) -> str:
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    if head and printable == len(head):
        return "not an ONNX model: the file is text, not a protobuf"
    return f"not a valid ONNX protobuf ({size} bytes; damaged or truncated): {str(exc).splitlines()[0]}"


def check_structure(proto: onnx.ModelProto, name: str) -> None:
    """Refuse protobufs that parse but are no usable ONNX model (random bytes often parse as one)."""
    if not proto.HasField("graph") or not proto.ir_version:
        raise InputError(f"{name}: not an ONNX model (no graph or IR version; damaged or truncated file?)")
    if proto.ir_version > onnx.IR_VERSION:
        raise InputError(
            f"{name}: IR version {proto.ir_version} is newer than this onnx package supports ({onnx.IR_VERSION})"
        )
    if proto.ir_version < MIN_IR_VERSION:
        raise InputError(f"{name}: IR version {proto.ir_version} is too old (at least {MIN_IR_VERSION} needed)")
    opset = default_opset(proto)
    newest = onnx.defs.onnx_opset_version()
    if not proto.opset_import:
        raise InputError(f"{name}: no opset_import (damaged file?)")
    if opset is not None and opset > newest:
        raise InputError(f"{name}: opset {opset} is newer than this onnx package supports ({newest})")


def default_opset(proto: onnx.ModelProto) -> int | None:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return None
