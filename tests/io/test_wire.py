"""graphfix.io.wire: the data files a model file names, from its wire format, are what parsing it says; what the
walk does not expect is left to the parser (None), never guessed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from graphfix.io.external_data import external_ref, model_tensors
from graphfix.io.replaced import files_read_by
from graphfix.io.wire import external_locations

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "samples").rglob("*.onnx"))


def external(name: str, location: str, values=None) -> onnx.TensorProto:
    tensor = numpy_helper.from_array(np.arange(4, dtype=np.float32) if values is None else values, name)
    onnx.external_data_helper.set_external_data(tensor, location=location, offset=0, length=tensor_bytes(tensor))
    tensor.ClearField("raw_data")
    return tensor


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    return len(tensor.raw_data)


def everywhere() -> onnx.ModelProto:
    """External tensors in each place a model keeps tensors: an initializer, a Constant's value, a subgraph's
    initializer, a sparse initializer, a function's node; an inline one, and a stale reference on an inline one."""
    stale = numpy_helper.from_array(np.ones(4, np.float32), "S")
    stale.external_data.add(key="location", value="stale.bin")  # data_location stays DEFAULT: not read
    then = helper.make_graph([helper.make_node("Identity", ["G"], ["o_then"])], "then", [],
                             [helper.make_tensor_value_info("o_then", TensorProto.FLOAT, [4])],
                             [external("G", "sub.bin")])
    other = helper.make_graph([helper.make_node("Identity", ["X"], ["o_else"])], "else", [],
                              [helper.make_tensor_value_info("o_else", TensorProto.FLOAT, [4])])
    sparse = onnx.SparseTensorProto(values=external("SV", "sparse.bin", np.ones(2, np.float32)),
                                    indices=numpy_helper.from_array(np.array([0, 2], np.int64), "SI"), dims=[4])
    nodes = [helper.make_node("Constant", [], ["C"], value=external("CV", "const.bin")),
             helper.make_node("If", ["cond"], ["Y"], then_branch=then, else_branch=other),
             helper.make_node("Twice", ["X"], ["Z"], domain="local")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4])],
                              [external("W", "model.onnx.data"), numpy_helper.from_array(np.ones(4, np.float32), "I"),
                               stale], sparse_initializer=[sparse])
    body = helper.make_node("Constant", [], ["F"], value=external("FV", "function.bin"))
    function = helper.make_function("local", "Twice", ["x"], ["y"], [body, helper.make_node("Add", ["x", "F"], ["y"])],
                                    [helper.make_opsetid("", 17)])
    return helper.make_model(graph, functions=[function], opset_imports=[helper.make_opsetid("", 17),
                                                                         helper.make_opsetid("local", 1)])


def walked(path: Path) -> set[str] | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return external_locations(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def parsed(proto: onnx.ModelProto) -> set[str]:
    return {ref.location for ref in (external_ref(t) for _, t in model_tensors(proto)) if ref is not None}


def test_every_place_a_model_keeps_tensors_is_walked(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(everywhere().SerializeToString())
    expected = {"model.onnx.data", "const.bin", "sub.bin", "sparse.bin", "function.bin"}
    assert parsed(everywhere()) == expected  # the parser's answer, which the walk must give
    assert walked(path) == expected
    assert files_read_by(path) == [path, *(tmp_path / name for name in sorted(expected))]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.parent.name)
def test_the_walk_agrees_with_the_parser_on_the_samples(sample):
    assert walked(sample) == parsed(onnx.load(str(sample), load_external_data=False))


def test_an_inline_model_names_no_data_file_and_its_bytes_are_not_read(tmp_path, monkeypatch):
    weights = numpy_helper.from_array(np.zeros((1024, 1024), np.float32), "W")  # 4 MiB inline
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1024])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1024])], [weights])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    read = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: read.append(n) or real(fd, n, at))
    assert walked(path) == set()
    assert sum(read) < 1 << 20  # windows around the fields, not the 4 MiB of values


def test_a_graph_written_in_records_is_walked_whole(tmp_path):
    """graphfix writes each weight of a light model as a graph record of its own (graphfix.io.streaming), which
    protobuf merges into the one graph."""
    from graphfix.io.streaming import write_streaming
    from graphfix.io.weights import detach_inline

    model = everywhere()
    model.graph.initializer.append(numpy_helper.from_array(np.ones(1 << 16, np.float32), "BIG"))  # detached
    light, weights = detach_inline(model)
    path = tmp_path / "m.onnx"
    with open(path, "wb") as f:
        write_streaming(light, weights, f)
    assert walked(path) == parsed(onnx.load(str(path), load_external_data=False)) == parsed(model)


@pytest.mark.parametrize("damage", ["truncated", "value twice", "key twice", "group"])
def test_what_the_walk_does_not_expect_is_left_to_the_parser(tmp_path, damage):
    data = everywhere().SerializeToString()
    if damage == "truncated":
        data = data[:-3]
    elif damage == "value twice":  # protobuf merges the two tensors into one: the parser says what that names
        from graphfix.io.streaming import record
        attribute = helper.make_attribute("value", external("CV", "a.bin"))
        twice = attribute.SerializeToString() + record(5, external("CV", "b.bin").SerializeToString())  # t again
        node = record(5, twice) + record(4, b"Constant")  # NodeProto: attribute, op_type
        data = record(7, record(1, node))  # ModelProto.graph.node
    elif damage == "key twice":
        tensor = external("W", "a.bin")
        tensor.external_data.add(key="location", value="b.bin")
        data = helper.make_model(helper.make_graph([], "g", [], [], [tensor])).SerializeToString()
    else:
        data += bytes([(9 << 3) | 3])  # a start-group field
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    assert walked(path) is None


# Found by a review: what protobuf's parser reads differently from a naive walk. onnx.proto is proto2, whose enums
# are closed: an undefined value is set aside and the value before it kept; varints are cut to 32 bits.
def vkey(number: int) -> bytes:
    from graphfix.io.streaming import varint

    return varint(number << 3)


def kept_in(location: str, after: bytes = b"") -> bytes:
    """A TensorProto of 4 floats kept in `location`, with `after` following its data_location = EXTERNAL."""
    from graphfix.io.streaming import record, varint

    return (vkey(1) + varint(4) + vkey(2) + varint(TensorProto.FLOAT) + record(8, b"w")
            + record(13, record(1, b"location") + record(2, location.encode())) + vkey(14) + varint(1) + after)


def with_initializer(tensor: bytes) -> bytes:
    from graphfix.io.streaming import record

    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString() + record(7, record(5, tensor))


@pytest.mark.parametrize("after", ["undefined", "negative", "past 32 bits"])
def test_an_undefined_enum_value_is_left_to_the_parser(tmp_path, after):
    from graphfix.io.streaming import varint

    tail = {"undefined": vkey(14) + varint(99), "negative": vkey(14) + varint((1 << 64) - 1),
            "past 32 bits": vkey(14) + varint(1 + (1 << 32))}[after]
    path = tmp_path / "m.onnx"
    path.write_bytes(with_initializer(kept_in("w.bin", tail)))
    assert parsed(onnx.load(str(path), load_external_data=False)) == {"w.bin"}  # protobuf keeps EXTERNAL
    assert walked(path) is None
    assert files_read_by(path) == [path, tmp_path / "w.bin"]


def test_check_never_writes_its_report_over_the_model_s_data(tmp_path):
    """Where the walk had read the undefined value as the tensor's place, `check --output-file w.bin` replaced the
    model's weights with its report (exit 0)."""
    import subprocess
    import sys

    from graphfix.io.streaming import varint

    (tmp_path / "model.onnx").write_bytes(with_initializer(kept_in("w.bin", vkey(14) + varint(99))))
    weights = np.arange(4, dtype=np.float32).tobytes()
    (tmp_path / "w.bin").write_bytes(weights)
    done = subprocess.run([sys.executable, "-m", "graphfix", "check", "model.onnx", "--output-file", "w.bin"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "would overwrite the input" in done.stderr, done.stdout + done.stderr
    assert (tmp_path / "w.bin").read_bytes() == weights


def test_what_protobuf_cannot_parse_names_no_data_file_to_remove(tmp_path):
    """A replaced output that names `OUT.onnx.data` but does not parse (a field numbered 0 further on, subgraphs
    nested past protobuf's depth): nothing of it is removed, as before the walk."""
    from graphfix.io.replaced import _data_files
    from graphfix.io.streaming import record

    broken = with_initializer(kept_in("OUT.onnx.data")) + vkey(0) + b"\x00"
    (tmp_path / "OUT.onnx").write_bytes(broken)
    assert walked(tmp_path / "OUT.onnx") is None
    assert _data_files(tmp_path / "OUT.onnx") == []

    graph = record(5, kept_in("OUT.onnx.data"))  # GraphProto.initializer
    for _ in range(40):  # If nodes in If nodes: a GraphProto in an AttributeProto (g, type GRAPH) in a NodeProto
        attribute = record(1, b"then_branch") + vkey(20) + bytes([AttributeProto.GRAPH]) + record(6, graph)
        graph = record(1, record(4, b"If") + record(5, attribute))
    (tmp_path / "deep.onnx").write_bytes(record(7, graph) + vkey(1) + bytes([8]))  # ir_version 8
    from google.protobuf.message import DecodeError

    with pytest.raises(DecodeError):  # past protobuf's depth
        onnx.load(str(tmp_path / "deep.onnx"), load_external_data=False)
    assert walked(tmp_path / "deep.onnx") is None and _data_files(tmp_path / "deep.onnx") == []
