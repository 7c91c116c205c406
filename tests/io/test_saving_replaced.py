"""Committing over an existing model keeps the data files the replaced graph read and names them (graphfix deletes
only what it made in the same run: a model in another folder may read them, helper 104): what it read is learnt
when staging begins (on the writer thread), and read again if the file changed since."""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphfix.io.replaced import LOCATION_ENTRY, _holds
from graphfix.io.saving import stage_model


def model(weight: float) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.full((64, 64), weight, np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_data_of_the_replaced_model_is_kept_and_named(tmp_path):
    for location in ("m.onnx.data", "m.onnx_data", "old.bin"):
        folder = tmp_path / location
        folder.mkdir()
        destination = folder / "m.onnx"
        onnx.save(model(1.0), destination, save_as_external_data=True, location=location, size_threshold=0)
        staged = stage_model(model(2.0), destination)
        staged.commit()
        assert sorted(p.name for p in folder.iterdir()) == sorted(["m.onnx", location])
        assert len(staged.kept) == 1 and location in staged.kept[0], staged.kept
        assert numpy_helper.to_array(onnx.load(destination).graph.initializer[0])[0, 0] == 2.0


def test_a_destination_changed_after_staging_began_is_read_again(tmp_path):
    destination = tmp_path / "m.onnx"
    onnx.save(model(1.0), destination)  # inline: it reads no data file
    staged = stage_model(model(2.0), destination)
    onnx.save(model(3.0), destination, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    staged.commit()
    assert len(staged.kept) == 1 and "m.onnx.data" in staged.kept[0]  # the data the replaced file read, named


def test_a_location_entry_split_across_reads_is_found(tmp_path):
    path = tmp_path / "bytes"
    for offset in range(len(LOCATION_ENTRY) + 2):
        path.write_bytes(b"x" * (16 - offset) + LOCATION_ENTRY + b"y" * 7)
        assert _found(path)
    path.write_bytes(b"x" * 40 + LOCATION_ENTRY[:-1] + b"y" * 40)
    assert not _found(path)


def _found(path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _holds(fd, os.fstat(fd).st_size, LOCATION_ENTRY, chunk=16)
    finally:
        os.close(fd)
