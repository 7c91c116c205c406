"""Writing a light model (see `graphfix.io.weights`) inline without a full-size copy in memory.

Its stubs are replaced by the weights they stand for, one tensor at a time: each weight goes out as its own
`graph { initializer }` record, which protobuf parsers merge into the one graph (embedded messages that repeat are
merged, by the wire format's rules), and raw bytes are written as they are, never serialized again.
"""

from __future__ import annotations

import onnx

from graphfix.io.mapped import MappedTensor
from graphfix.io.protos import copy_field, copy_without_initializers
from graphfix.io.weights import Weight, Weights, resolve
from graphfix.io.wire import GRAPH_INITIALIZER, MODEL_GRAPH, TENSOR_RAW_DATA, key, record, varint


def write_streaming(proto: onnx.ModelProto, weights: Weights, f, skip: frozenset[str] = frozenset()) -> None:
    """Write a light model inline: the model without initializers, then each initializer (stubs resolved) as a
    separate graph record that the parser merges into the graph. Records may come in any order."""
    f.write(copy_without_initializers(proto).SerializeToString())
    for tensor in proto.graph.initializer:
        if tensor.name not in skip:
            write_initializer(resolve(tensor, weights), f)


def write_initializer(tensor: Weight, f) -> None:
    """One `graph { initializer: tensor }` record; raw bytes go out without another serialized copy (a mapped
    weight's from the mapped input file)."""
    if isinstance(tensor, MappedTensor):
        header, raw = tensor.header, tensor.data()
    elif not tensor.HasField("raw_data"):
        f.write(record(MODEL_GRAPH, record(GRAPH_INITIALIZER, tensor.SerializeToString())))
        return
    else:
        header, raw = onnx.TensorProto(), tensor.raw_data
        for field, value in tensor.ListFields():
            if field.name != "raw_data":
                copy_field(header, field, value)
    head = header.SerializeToString() + key(TENSOR_RAW_DATA) + varint(len(raw))
    tensor_length = len(head) + len(raw)
    initializer_head = key(GRAPH_INITIALIZER) + varint(tensor_length)
    f.write(key(MODEL_GRAPH) + varint(len(initializer_head) + tensor_length) + initializer_head + head)
    f.write(raw)
