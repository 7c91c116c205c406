"""A big inline model parsed light: its large weights stay in the model file, memory-mapped, one copy (#23).

Parsing a BERT-base copies its 435 MB of weights into the proto, and onnxruntime's sessions are then fed arrays
made from them: two copies. `parse_light` hands the parser the file's wire format with each large initializer's
raw bytes cut out (graphfix.io.wire.light_model): the proto holds stubs (graphfix.io.weights), and each stub's
weight is a `MappedTensor`, the place of its bytes in the model file loading checked and holds open. Its array
is a read-only view of the mapped file, which the sessions read in place; writing the output copies its bytes
from that file. Every read of a weight's values goes through `MappedTensor.array` (the rules through
`MappedValues`, onnx-graphsurgeon's lazy values), never through the stub.

The file is mapped for as long as the weights are used, and only in a forked worker (the Python API parses the
whole file: a caller's process must not hold a mapping of a file it may change). A file cut short meanwhile by
another process raises SIGBUS in the worker that reads it, which costs that worker only (one line, exit 2), as
the mapped parse did before; a file rewritten in place meanwhile is read as it is then, as external data files
are (graphfix.validate.runner maps them too).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx_graphsurgeon.ir.tensor import LazyValues

from graphfix.io.external_data import STUB_LOCATION, model_tensors
from graphfix.io.held import HeldFile
from graphfix.io.wire import TENSOR_EXTERNAL, TENSOR_LOCATION, VARINT, key, light_model, record, varint

MAPPED_TYPES = {onnx.TensorProto.FLOAT: "<f4", onnx.TensorProto.FLOAT16: "<f2", onnx.TensorProto.DOUBLE: "<f8",
                onnx.TensorProto.INT8: "i1", onnx.TensorProto.UINT8: "u1", onnx.TensorProto.INT16: "<i2",
                onnx.TensorProto.INT32: "<i4", onnx.TensorProto.INT64: "<i8", onnx.TensorProto.BOOL: "?"}
PROTOBUF_MAX = 2**31 - 1  # the largest message protobuf parses
STUB_FIELDS = (key(TENSOR_LOCATION, VARINT) + varint(onnx.TensorProto.EXTERNAL)
               + record(TENSOR_EXTERNAL, record(1, b"location") + record(2, STUB_LOCATION.encode())))


@dataclass(frozen=True, eq=False)
class MappedTensor:
    """A weight whose bytes are `length` bytes at `offset` of the model `file`; `header` is the tensor without
    them (name, type, dims, doc string)."""

    header: onnx.TensorProto
    file: HeldFile
    offset: int
    length: int

    @property
    def name(self) -> str:
        return self.header.name

    @property
    def data_type(self) -> int:
        return self.header.data_type

    @property
    def dims(self) -> list[int]:
        return list(self.header.dims)

    def data(self) -> memoryview:
        """The raw bytes, in the mapped file (no copy)."""
        return memoryview(self.file.mapped())[self.offset:self.offset + self.length]

    def array(self) -> np.ndarray:
        """The values: a read-only view of the mapped file."""
        dtype = np.dtype(MAPPED_TYPES[self.data_type])
        return np.frombuffer(self.file.mapped(), dtype=dtype, count=self.length // dtype.itemsize,
                             offset=self.offset).reshape(self.dims)

    def to_proto(self) -> onnx.TensorProto:
        """A full TensorProto of it (copies its bytes: for a caller that wants one, as the Python API's model)."""
        full = onnx.TensorProto()
        full.CopyFrom(self.header)
        full.raw_data = bytes(self.data())
        return full

    def renamed(self, name: str) -> MappedTensor:
        header = onnx.TensorProto()
        header.CopyFrom(self.header)
        header.name = name
        return dataclasses.replace(self, header=header)


class MappedValues(LazyValues):
    """onnx-graphsurgeon's lazy values of a mapped weight: loading them gives the read-only view, no copy. Its
    `tensor` is the header (no values): exporting a Constant that still holds these writes that header, so
    graphfix.io.weights.detached swaps them first."""

    def __init__(self, mapped: MappedTensor):
        super().__init__(mapped.header)
        self.mapped = mapped

    def load(self) -> np.ndarray:
        return self.mapped.array()


def parse_light(model_file: HeldFile, min_bytes: int) -> tuple[onnx.ModelProto, dict[str, MappedTensor]] | None:
    """The model with each inline initializer of at least `min_bytes` (of a type numpy views) as a stub, and the
    mapped weight of each stub by name; None where the file's wire format is not one the walk reads (the caller
    parses it whole)."""
    if model_file.size > PROTOBUF_MAX:  # protobuf refuses it whole: so must this
        return None
    light = light_model(model_file.fd, model_file.size, min_bytes, STUB_FIELDS,
                        {t: np.dtype(d).itemsize for t, d in MAPPED_TYPES.items()})
    if light is None:
        return None
    data, places = light
    proto = onnx.ModelProto()
    decoded = proto.ParseFromString(data)
    if decoded is not None and decoded != len(data):
        return None
    initializers = proto.graph.initializer
    if len({t.name for t in initializers}) != len(initializers):  # refused by the checks: parsed whole, as it is
        return None
    named = Counter(tensor.name for _, tensor in model_tensors(proto))
    if any(named[initializers[place.ordinal].name] > 1 for place in places):
        return None  # another tensor of that name (a subgraph's own, shadowing it): parsed whole, each as it is
    weights = {}
    for place in places:
        stub = initializers[place.ordinal]
        header = onnx.TensorProto()
        header.CopyFrom(stub)
        header.ClearField("data_location")
        del header.external_data[:]
        weights[stub.name] = MappedTensor(header, model_file, place.offset, place.length)
    return proto, weights
