"""graphfix.io.wire: the data files a model file names, from its wire format, are what parsing it says; what the
walk does not expect is left to the parser (None), never guessed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphfix.io.external_data import external_ref, model_tensors
from graphfix.io.saving import files_read_by
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
