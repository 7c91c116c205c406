"""Seeded mutations of an ONNX model: protobuf-aware edits and byte-level damage.

`mutate(data, seed)` returns (bytes, description); the same seed always gives the same mutant."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
from onnx import AttributeProto, TensorProto, helper

BAD_DTYPES = [0, 8, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 40, 99, 2**31 - 1]


def _tensors(model: onnx.ModelProto) -> list[TensorProto]:
    found: list[TensorProto] = list(model.graph.initializer)
    for node in _nodes(model):
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                found.append(attr.t)
    return found


def _nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    def walk(graph: onnx.GraphProto):
        for node in graph.node:
            yield node
            for attr in node.attribute:
                if attr.type == AttributeProto.GRAPH:
                    yield from walk(attr.g)
                for sub in attr.graphs:
                    yield from walk(sub)
    yield from walk(model.graph)
    for func in model.functions:
        yield from func.node


def _tensor(model, rng) -> TensorProto | None:
    tensors = _tensors(model)
    return rng.choice(tensors) if tensors else None


def bad_dtype(model, rng):
    t = _tensor(model, rng)
    if t is None:
        return "no tensor"
    t.data_type = rng.choice(BAD_DTYPES)
    return f"tensor '{t.name}' data_type={t.data_type}"


def raw_size(model, rng):
    t = _tensor(model, rng)
    if t is None:
        return "no tensor"
    data = t.raw_data or onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t)).raw_data
    cut = rng.choice([-1, -3, 1, 5, -len(data)])
    t.ClearField("float_data"), t.ClearField("int64_data"), t.ClearField("int32_data")
    t.raw_data = data[:cut] if cut < 0 else data + bytes(cut)
    return f"tensor '{t.name}' raw_data {len(data)} -> {len(t.raw_data)} bytes"


def dims(model, rng):
    t = _tensor(model, rng)
    if t is None:
        return "no tensor"
    choice = rng.randrange(5)
    if choice == 0:
        t.dims.append(rng.choice([2, 3, 10**12]))
    elif choice == 1 and t.dims:
        t.dims[rng.randrange(len(t.dims))] = rng.choice([-1, -(2**40), 0, 2**40, 7])
    elif choice == 2:
        del t.dims[:]
    elif choice == 3:
        t.dims.extend([2**31, 2**31, 2**31])
    else:
        t.dims[:] = [-1]
    return f"tensor '{t.name}' dims {list(t.dims)}"


def typed_fields(model, rng):
    t = _tensor(model, rng)
    if t is None:
        return "no tensor"
    t.ClearField("raw_data")
    field = rng.choice(["float_data", "int64_data", "int32_data", "double_data", "uint64_data", "string_data"])
    values = {"float_data": [1.5] * 3, "int64_data": [7] * 5, "int32_data": [1], "double_data": [2.0] * 9,
              "uint64_data": [3], "string_data": [b"\xff\xfe", b"a"]}[field]
    getattr(t, field).extend(values)
    return f"tensor '{t.name}' values in {field} ({len(values)})"


def string_tensor(model, rng):
    t = _tensor(model, rng)
    if t is None:
        return "no tensor"
    t.ClearField("raw_data"), t.ClearField("float_data"), t.ClearField("int64_data")
    t.data_type = TensorProto.STRING
    mode = rng.randrange(3)
    if mode == 0:
        t.string_data.extend([b"\xff\xfe\x80"] * max(1, len(t.dims) and 1))
    elif mode == 1:
        t.raw_data = b"\xff" * 8
    else:
        t.string_data.extend([b"ok"] * 3)
    return f"tensor '{t.name}' made STRING (mode {mode})"


def sparse(model, rng):
    values = helper.make_tensor("sp_values", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    indices = helper.make_tensor("sp_indices", TensorProto.INT64, [3], rng.choice([[0, 1, 2], [5, 1, 99], [-1, 0, 0]]))
    dense = rng.choice([[4], [2, 2], [], [-3], [10**12]])
    sp = helper.make_sparse_tensor(values, indices, dense)
    mode = rng.randrange(4)
    if mode == 1:
        sp.values.ClearField("name")
    elif mode == 2:
        sp.indices.data_type = TensorProto.FLOAT
    elif mode == 3:
        sp.values.data_type = 77
    model.graph.sparse_initializer.append(sp)
    if model.graph.node and rng.random() < 0.5:
        model.graph.node[0].input.append("sp_values")
    return f"sparse initializer dims {dense} mode {mode}"


def attr_type(model, rng):
    nodes = [n for n in _nodes(model) if n.attribute]
    if not nodes:
        return "no attribute"
    node = rng.choice(nodes)
    attr = rng.choice(node.attribute)
    mode = rng.randrange(4)
    if mode == 0:
        attr.type = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 13, 99])
    elif mode == 1:
        attr.ClearField("i"), attr.ClearField("f"), attr.ClearField("t"), attr.ClearField("ints")
    elif mode == 2:
        attr.type = AttributeProto.STRING
        attr.s = b"\xff\xfe"
    else:
        attr.ref_attr_name = "nowhere"
    return f"node '{node.name}' attribute '{attr.name}' mode {mode}"


def cycle(model, rng):
    nodes = list(model.graph.node)
    if len(nodes) < 2:
        return "too small"
    i = rng.randrange(len(nodes) - 1)
    j = rng.randrange(i + 1, len(nodes))
    if nodes[i].input and nodes[j].output:
        nodes[i].input[rng.randrange(len(nodes[i].input))] = nodes[j].output[0]
    return f"node {i} reads node {j}'s output"


def graph_edit(model, rng):
    graph = model.graph
    mode = rng.randrange(8)
    if mode == 0 and graph.node:
        del graph.node[rng.randrange(len(graph.node))]
    elif mode == 1 and len(graph.node) > 1:
        graph.node[1].output[0] = graph.node[0].output[0]  # two producers of one tensor
    elif mode == 2 and graph.node:
        graph.node[rng.randrange(len(graph.node))].input.append("does_not_exist")
    elif mode == 3 and graph.node:
        graph.node[rng.randrange(len(graph.node))].op_type = rng.choice(["NoSuchOp", "", "Loop", "If", "Scan"])
    elif mode == 4:
        del graph.output[:]
    elif mode == 5 and graph.node:
        graph.node[rng.randrange(len(graph.node))].domain = rng.choice(["com.microsoft", "nowhere", "ai.onnx.ml"])
    elif mode == 6:
        del model.opset_import[:]
        model.opset_import.append(helper.make_opsetid("", rng.choice([1, 5, 99, -1])))
    else:
        model.ir_version = rng.choice([0, 1, 2, 11, 12, 100, -5])
    return f"graph edit {mode}"


def input_type(model, rng):
    if not model.graph.input:
        return "no input"
    value = rng.choice(model.graph.input)
    mode = rng.randrange(7)
    if mode == 0:
        value.type.CopyFrom(helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2])))
    elif mode == 1:
        value.type.CopyFrom(helper.make_map_type_proto(TensorProto.INT64,
                                                       helper.make_tensor_type_proto(TensorProto.FLOAT, [2])))
    elif mode == 2:
        value.type.CopyFrom(helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2])))
    elif mode == 3:
        value.type.tensor_type.elem_type = rng.choice([0, 8, 99])
    elif mode == 4:
        value.ClearField("type")
    elif mode == 5:
        for dim in value.type.tensor_type.shape.dim:
            dim.dim_value = rng.choice([10**12, 2**40, 0])
    else:
        value.type.tensor_type.shape.dim.add().dim_value = -7
    return f"input '{value.name}' type mode {mode}"


def function(model, rng):
    mode = rng.randrange(3)
    node = helper.make_node("F", ["x"], ["y"], domain="local")
    if mode == 0:  # recursion
        body = [helper.make_node("F", ["x"], ["y"], domain="local")]
    elif mode == 1:  # a function that doubles 20 times
        body = [helper.make_node("G", ["x"], ["y"], domain="local")]
    else:
        body = [helper.make_node("Constant", [], ["y"], value=helper.make_tensor("c", 1, [2], [1.0, 2.0]))]
    model.functions.append(helper.make_function("local", "F", ["x"], ["y"], body,
                                                [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]))
    model.opset_import.append(helper.make_opsetid("local", 1))
    if model.graph.input:
        node.input[0] = model.graph.input[0].name
        node.output[0] = "fuzz_f_out"
        model.graph.node.append(node)
        # typed: an untyped output would be refused before the function is looked at
        model.graph.output.append(helper.make_tensor_value_info("fuzz_f_out", TensorProto.FLOAT, None))
    return f"local function mode {mode}"


def external_fields(model, rng):
    t = _tensor(model, rng)
    if t is None:
        return "no tensor"
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("raw_data")
    del t.external_data[:]
    entries = rng.choice([
        {"location": "missing.bin"}, {"location": "w.bin", "offset": "-4"}, {"location": "w.bin", "length": "x"},
        {"offset": "0"}, {"location": ""}, {"location": "a" * 5000}, {"location": "/etc/passwd"},
        {"location": "../x.bin"}, {"location": "w.bin", "length": "99999999999999999999999"},
    ])
    for key, value in entries.items():
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return f"tensor '{t.name}' external {entries if len(str(entries)) < 80 else 'long location'}"


PROTO_MUTATORS: list[Callable] = [bad_dtype, raw_size, dims, typed_fields, string_tensor, sparse, attr_type, cycle,
                                  graph_edit, input_type, function, external_fields]


def _bit_flips(buf: bytearray, rng: random.Random) -> str:
    n = rng.randint(1, 8)
    for _ in range(n):
        buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    return f"{n} bit flips"


def _truncate(buf: bytearray, rng: random.Random) -> str:
    cut = rng.randrange(1, len(buf))
    del buf[cut:]
    return f"truncated at {cut}"


def _insert(buf: bytearray, rng: random.Random) -> str:
    at = rng.randrange(len(buf))
    buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    return f"bytes inserted at {at}"


def _set_ff(buf: bytearray, rng: random.Random) -> str:
    at = rng.randrange(len(buf))
    buf[at] = 0xFF
    return f"byte {at} set to 0xff"


def _non_utf8(buf: bytearray, rng: random.Random) -> str:
    data, description = _non_utf8_name(bytes(buf), rng)
    buf[:] = data
    return description


BYTE_MUTATORS: list[Callable] = [_bit_flips, _truncate, _insert, _set_ff, _non_utf8]


def _byte_damage(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    buf = bytearray(data)
    description = rng.choice(BYTE_MUTATORS)(buf, rng)
    return bytes(buf), description


def _non_utf8_name(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Replace the first byte of a name in the serialized model by 0xff (same length: the protobuf stays valid)."""
    model = onnx.load_from_string(data)
    names = [n.name for n in model.graph.node if n.name] + [t.name for t in model.graph.initializer]
    names += [v.name for v in model.graph.input]
    if not names:
        return data, "no names"
    name = rng.choice(names).encode()
    at = data.find(name)
    buf = bytearray(data)
    buf[at] = 0xFF
    return bytes(buf), f"name {name[:30]!r} made non-UTF-8"


def mutate(data: bytes, seed: int) -> tuple[bytes, str]:
    rng = random.Random(seed)
    if rng.random() < 0.35:
        return _byte_damage(data, rng)
    model = onnx.load_from_string(data)
    steps = []
    for _ in range(rng.choice([1, 1, 1, 2])):
        mutator = rng.choice(PROTO_MUTATORS)
        steps.append(f"{mutator.__name__}: {mutator(model, rng)}")
    return model.SerializeToString(), "; ".join(steps)


def _file(content: bytes) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        (folder / "model.onnx").write_bytes(content)
        return folder / "model.onnx"

    return write


def _folder_without_models(folder: Path) -> Path:
    (folder / "model.onnx").mkdir()
    return folder / "model.onnx"


# Files that are no model at all: name -> make(folder) -> the path given to the commands
FILE_CASES: dict[str, Callable[[Path], Path]] = {
    "missing-path": lambda folder: folder / "nope.onnx",
    "folder-without-models": _folder_without_models,
    "empty-file": _file(b""),
    "text-file": _file(b"ir_version: 9\ngraph { node { op_type: 'Relu' } }\n"),
    "lfs-pointer": _file(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12345\n"),
}
