"""The external data files a model file names, read from its wire format without parsing its tensors' bytes.

Replacing an output (a second run, `--in-place`) must know which data files the model being replaced reads, so
that the commit can remove its own and keep the rest (graphfix.io.saving). Parsing that model costs its whole
size in memory and time, and a search of its bytes for `location` reads all of them (0.3 s and 50 MB on an inline
BERT-base, on the staging thread, beside validation). `external_locations` walks protobuf's wire format instead:
only the messages that hold tensors (the graph, its nodes, their attributes and subgraphs, the model's functions
and their attributes' defaults, its training graphs, as `graphfix.io.external_data.model_tensors` visits them)
are entered, every other field is skipped by its length, and no tensor's values are read: a few milliseconds on
BERT-base.

Anything the walk does not expect makes it answer None, and the caller parses the model: a truncated field, a
group, a field number protobuf refuses, an enum value onnx.proto does not define (proto2's enums are closed: the
parser sets such a value aside and keeps the one before it), an attribute's tensor or a sparse tensor's part
given twice (protobuf merges them into one), a key given twice, subgraphs nested past MAX_DEPTH.

The walk does not check what the parser checks elsewhere in the file, so its answer is trusted only when it is
"no tensor keeps its values in external data", the case of the big inline models where parsing costs the most
(graphfix.io.saving); a model with external data is small, and is parsed.

`light_model` walks the same format to hand the parser a model without its large inline weights' bytes (they stay
in the file, graphfix.io.mapped). It changes nothing the parser would read otherwise: it cuts out a tensor's one
`raw_data` record only where the tensor has no other field that could hold values and the bytes are exactly
what its dims need, and gives it a stub's fields in their place; every other byte is handed over as it is, and
anything unexpected leaves the whole file to the parser.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from onnx import (
    AttributeProto,
    FunctionProto,
    GraphProto,
    ModelProto,
    NodeProto,
    SparseTensorProto,
    TensorProto,
    TrainingInfoProto,
)

from graphfix.core.counts import MAX_RANK

VARINT, I64, LEN, I32 = 0, 1, 2, 5  # wire types (3 and 4, groups, are not used by onnx.proto)
WINDOW = 64 << 10  # bytes read at a time around the fields the walk reads
MAX_DEPTH = 30  # nested subgraphs: protobuf's parser stops at 100 levels of messages, 3 per subgraph level
MAX_FIELD = (1 << 29) - 1  # field numbers protobuf accepts are 1 .. 2**29 - 1


def _number(message, field: str) -> int:
    return message.DESCRIPTOR.fields_by_name[field].number


MODEL_GRAPH, MODEL_FUNCTIONS = _number(ModelProto, "graph"), _number(ModelProto, "functions")
MODEL_TRAINING = _number(ModelProto, "training_info")
TRAINING_GRAPHS = (_number(TrainingInfoProto, "initialization"), _number(TrainingInfoProto, "algorithm"))
FUNCTION_NODE = _number(FunctionProto, "node")
FUNCTION_DEFAULTS = _number(FunctionProto, "attribute_proto")  # the defaults of its attributes
GRAPH_NODE, GRAPH_INITIALIZER = _number(GraphProto, "node"), _number(GraphProto, "initializer")
GRAPH_SPARSE = _number(GraphProto, "sparse_initializer")
NODE_ATTRIBUTE = _number(NodeProto, "attribute")
ATTR_TYPE = _number(AttributeProto, "type")
ATTR_FIELDS = {_number(AttributeProto, "t"): AttributeProto.TENSOR, _number(AttributeProto, "tensors"):
               AttributeProto.TENSORS, _number(AttributeProto, "g"): AttributeProto.GRAPH,
               _number(AttributeProto, "graphs"): AttributeProto.GRAPHS, _number(AttributeProto, "sparse_tensor"):
               AttributeProto.SPARSE_TENSOR, _number(AttributeProto, "sparse_tensors"): AttributeProto.SPARSE_TENSORS}
SINGULAR_ATTR = {AttributeProto.TENSOR, AttributeProto.GRAPH, AttributeProto.SPARSE_TENSOR}
SPARSE_PARTS = (_number(SparseTensorProto, "values"), _number(SparseTensorProto, "indices"))
TENSOR_EXTERNAL, TENSOR_LOCATION = _number(TensorProto, "external_data"), _number(TensorProto, "data_location")
TENSOR_DIMS, TENSOR_TYPE, TENSOR_RAW_DATA = (_number(TensorProto, f) for f in ("dims", "data_type", "raw_data"))
TENSOR_PLAIN = frozenset(_number(TensorProto, f) for f in ("dims", "data_type", "name", "raw_data", "doc_string",
                                                           "metadata_props"))  # no other place for values
ENTRY_KEY, ENTRY_VALUE = 1, 2  # StringStringEntryProto
ATTRIBUTE_TYPES = frozenset(AttributeProto.AttributeType.values())
DATA_LOCATIONS = frozenset(TensorProto.DataLocation.values())


class Unexpected(Exception):
    """The bytes are not what the walk expects: the caller parses the model instead."""


class _Reader:
    """Bytes of a file descriptor, read a window at a time (`os.pread`: no mapping, no shared file position)."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size
        self.start, self.data = 0, b""

    def bytes(self, start: int, stop: int) -> bytes:
        if not (self.start <= start and stop <= self.start + len(self.data)):
            self.start, self.data = start, os.pread(self.fd, max(stop - start, WINDOW), start)
        if stop > self.start + len(self.data):
            raise Unexpected("the file ends inside a field")
        return self.data[start - self.start:stop - self.start]

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        value = shift = 0
        while shift < 64:
            if pos >= end:
                raise Unexpected("a varint runs past its message")
            byte = self.bytes(pos, pos + 1)[0]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, pos
            shift += 7
        raise Unexpected("a varint longer than 10 bytes")

    def fields(self, start: int, end: int):
        """(number, wire type, value) of each field of the message in [start, end): a varint's value, or the
        (start, stop) of a length-delimited field's payload; fixed-size fields are skipped."""
        for number, wire, value, _ in self.records(start, end):
            if wire not in (I64, I32):
                yield number, wire, value

    def records(self, start: int, end: int):
        """As `fields`, fixed-size fields too (their value None), with where each field's record (its key)
        starts."""
        pos = start
        while pos < end:
            begin = pos
            key, pos = self.varint(pos, end)
            number, wire = key >> 3, key & 7
            if not 1 <= number <= MAX_FIELD:
                raise Unexpected(f"field number {number}")
            if wire == VARINT:
                value, pos = self.varint(pos, end)
                yield number, wire, value, begin
            elif wire in (I64, I32):
                pos += 8 if wire == I64 else 4
                yield number, wire, None, begin
            elif wire == LEN:
                length, pos = self.varint(pos, end)
                if pos + length > end:
                    raise Unexpected("a field runs past its message")
                yield number, wire, (pos, pos + length), begin
                pos += length
            else:
                raise Unexpected(f"wire type {wire}")
        if pos != end:
            raise Unexpected("a fixed-size field runs past its message")


def external_locations(fd: int, size: int) -> set[str] | None:
    """The `location` of every tensor of the serialized ModelProto behind `fd` that keeps its values in external
    data ('' for one that names none), or None where the walk cannot tell (see the module's docstring)."""
    reader = _Reader(fd, size)
    found: set[str] = set()
    try:
        # The graph may come in several records, which protobuf merges (graphfix writes each weight as its own,
        # graphfix.io.streaming): a graph's tensors are all in repeated fields, so walking each record is exact.
        for graph in _messages(reader, 0, size, MODEL_GRAPH):
            _graph(reader, graph, found, 0)
        for function in _messages(reader, 0, size, MODEL_FUNCTIONS):
            for node in _messages(reader, *function, FUNCTION_NODE):
                _node(reader, node, found, 0)
            _attributes(reader, _messages(reader, *function, FUNCTION_DEFAULTS), found, 0)
        for training in _messages(reader, 0, size, MODEL_TRAINING):
            for number in TRAINING_GRAPHS:
                for graph in _messages(reader, *training, number, singular=True):
                    _graph(reader, graph, found, 0)
    except (Unexpected, OSError, UnicodeDecodeError):
        return None
    return found


def _messages(reader: _Reader, start: int, end: int, number: int, singular: bool = False) -> list[tuple[int, int]]:
    spans = []
    for field, wire, value in reader.fields(start, end):
        if field == number:
            if wire != LEN:
                raise Unexpected(f"field {number} is not a message")
            spans.append(value)
    if singular and len(spans) > 1:
        raise Unexpected(f"message field {number} given {len(spans)} times (protobuf merges them)")
    return spans


def _graph(reader: _Reader, span: tuple[int, int], found: set[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise Unexpected("subgraphs nested too deep")
    for number, wire, value in reader.fields(*span):
        if wire != LEN:
            continue
        if number == GRAPH_INITIALIZER:
            _tensor(reader, value, found)
        elif number == GRAPH_SPARSE:
            _sparse(reader, value, found)
        elif number == GRAPH_NODE:
            _node(reader, value, found, depth)


def _node(reader: _Reader, span: tuple[int, int], found: set[str], depth: int) -> None:
    _attributes(reader, _messages(reader, *span, NODE_ATTRIBUTE), found, depth)


def _attributes(reader: _Reader, spans: list[tuple[int, int]], found: set[str], depth: int) -> None:
    for attribute in spans:
        kind, parts = None, []
        for number, wire, value in reader.fields(*attribute):
            if number == ATTR_TYPE and wire == VARINT:
                kind = _known(value, ATTRIBUTE_TYPES)
            elif number in ATTR_FIELDS and wire == LEN:
                parts.append((ATTR_FIELDS[number], value))
        chosen = [value for part_kind, value in parts if part_kind == kind]
        if kind in SINGULAR_ATTR and len(chosen) > 1:
            raise Unexpected("an attribute's value given twice (protobuf merges them)")
        for value in chosen:
            if kind in (AttributeProto.TENSOR, AttributeProto.TENSORS):
                _tensor(reader, value, found)
            elif kind in (AttributeProto.SPARSE_TENSOR, AttributeProto.SPARSE_TENSORS):
                _sparse(reader, value, found)
            else:
                _graph(reader, value, found, depth + 1)


def _sparse(reader: _Reader, span: tuple[int, int], found: set[str]) -> None:
    for number in SPARSE_PARTS:
        parts = _messages(reader, *span, number, singular=True)
        for part in parts:
            _tensor(reader, part, found)


def _tensor(reader: _Reader, span: tuple[int, int], found: set[str]) -> None:
    location, keys, external = "", set(), False
    for number, wire, value in reader.fields(*span):
        if number == TENSOR_LOCATION and wire == VARINT:
            external = _known(value, DATA_LOCATIONS) == TensorProto.EXTERNAL  # the last one given counts
        elif number == TENSOR_EXTERNAL and wire == LEN:
            key, text = _entry(reader, value)
            if key in keys:
                raise Unexpected(f"external-data key '{key}' given twice")
            keys.add(key)
            location = text if key == "location" else location
    if external:
        found.add(location)


def _known(value: int, values: frozenset[int]) -> int:
    """An enum's value as the walk reads it, where onnx.proto defines it."""
    if value not in values:
        raise Unexpected(f"enum value {value} is not defined (protobuf would set it aside)")
    return value


def _entry(reader: _Reader, span: tuple[int, int]) -> tuple[str, str]:
    key = value = b""
    for number, wire, part in reader.fields(*span):
        if wire == LEN and number in (ENTRY_KEY, ENTRY_VALUE):
            text = reader.bytes(*part)
            key, value = (text, value) if number == ENTRY_KEY else (key, text)
    return key.decode("utf-8"), value.decode("utf-8")


@dataclass(frozen=True)
class InlineBytes:
    """Where the raw bytes of the initializer number `ordinal` of the graph (counted as protobuf merges the graph's
    records) lie in the file."""

    ordinal: int
    offset: int
    length: int


def light_model(fd: int, size: int, min_bytes: int, stub: bytes,
                types: Mapping[int, int]) -> tuple[bytes, list[InlineBytes]] | None:
    """The serialized model behind `fd` with the raw bytes of each large initializer cut out, each such tensor given
    the fields `stub` (serialized TensorProto fields) instead, and where the bytes cut out lie; None where the walk
    cannot tell (see the module's docstring), and the caller parses the file.

    An initializer is cut out only where nothing else could hold its values: its fields are its dims, data type
    (one of `types`, data type -> item size), name, doc string, metadata and one `raw_data` of at least
    `min_bytes`, exactly the bytes its dims need. Every other field and tensor is copied as it is."""
    reader = _Reader(fd, size)
    parts: list[bytes] = []
    found: list[InlineBytes] = []
    ordinal, pos = 0, 0
    try:
        for number, wire, value, begin in reader.records(0, size):
            if number != MODEL_GRAPH:
                continue
            if wire != LEN:
                raise Unexpected("the graph is not a message")
            graph, ordinal = _light_graph(reader, value, ordinal, found, min_bytes, stub, types)
            parts += [reader.bytes(pos, begin), key(MODEL_GRAPH), varint(len(graph)), graph]
            pos = value[1]
        parts.append(reader.bytes(pos, size))
    except (Unexpected, OSError):
        return None
    return b"".join(parts), found


def _light_graph(reader: _Reader, span: tuple[int, int], ordinal: int, found: list[InlineBytes], min_bytes: int,
                 stub: bytes, types: Mapping[int, int]) -> tuple[bytes, int]:
    parts, pos = [], span[0]
    for number, wire, value, begin in reader.records(*span):
        if number != GRAPH_INITIALIZER or wire != LEN:
            continue
        raw = _raw_bytes(reader, value, min_bytes, types)
        if raw is not None:
            light = reader.bytes(value[0], raw[0]) + reader.bytes(raw[2], value[1]) + stub
            parts += [reader.bytes(pos, begin), key(GRAPH_INITIALIZER), varint(len(light)), light]
            pos = value[1]
            found.append(InlineBytes(ordinal, raw[1], raw[2] - raw[1]))
        ordinal += 1
    parts.append(reader.bytes(pos, span[1]))
    return b"".join(parts), ordinal


def _raw_bytes(reader: _Reader, span: tuple[int, int], min_bytes: int,
               types: Mapping[int, int]) -> tuple[int, int, int] | None:
    """(start of the record, start, end of the bytes) of a tensor's `raw_data`, where they are its only values."""
    raws, dims, data_type = [], [], None
    for number, wire, value, begin in reader.records(*span):
        if number not in TENSOR_PLAIN or wire in (I64, I32):  # another place for values, or not as onnx.proto says
            return None
        if number == TENSOR_RAW_DATA:
            if wire != LEN:
                return None
            raws.append((begin, *value))
        elif number == TENSOR_TYPE and wire == VARINT:
            data_type = value
        elif number == TENSOR_DIMS and wire == VARINT:
            dims.append(value)
        elif number == TENSOR_DIMS:  # packed
            pos = value[0]
            while pos < value[1]:
                dim, pos = reader.varint(pos, value[1])
                dims.append(dim)
        elif number == TENSOR_TYPE:
            return None
    if len(raws) != 1 or data_type not in types or len(dims) > MAX_RANK or any(d >= 1 << 48 for d in dims):
        return None  # other values, or negative or absurd dims: check_tensor's to refuse
    begin, start, end = raws[0]
    if end - start < min_bytes or end - start != math.prod(dims) * types[data_type]:
        return None
    return begin, start, end


def record(field_number: int, payload: bytes) -> bytes:
    return key(field_number) + varint(len(payload)) + payload


def key(field_number: int, wire: int = LEN) -> bytes:
    return varint(field_number << 3 | wire)


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
