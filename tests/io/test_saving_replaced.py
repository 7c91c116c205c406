"""Committing over an existing model removes the data files the replaced graph read, and only those named after
it (`NAME.data`) that no other model reads: what it read is learnt when staging begins (on the writer thread), and
read again if the file changed since."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphfix.io.replaced import LOCATION_ENTRY
from graphfix.io.saving import stage_model
from graphfix.io.targets import _mentions


def model(weight: float) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.full((64, 64), weight, np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_data_of_the_replaced_model_is_removed_at_commit(tmp_path):
    destination = tmp_path / "m.onnx"
    onnx.save(model(1.0), destination, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    staged = stage_model(model(2.0), destination)
    staged.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"] and staged.kept == ()
    assert numpy_helper.to_array(onnx.load(destination).graph.initializer[0])[0, 0] == 2.0


def test_data_not_named_after_the_replaced_model_is_kept_and_said(tmp_path):
    destination = tmp_path / "m.onnx"
    onnx.save(model(1.0), destination, save_as_external_data=True, location="old.bin", size_threshold=0)
    staged = stage_model(model(2.0), destination)
    staged.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "old.bin"]
    assert len(staged.kept) == 1 and "old.bin" in staged.kept[0] and "not derived from m.onnx" in staged.kept[0]


def test_a_destination_changed_after_staging_began_is_read_again(tmp_path):
    destination = tmp_path / "m.onnx"
    onnx.save(model(1.0), destination)  # inline: it reads no data file
    staged = stage_model(model(2.0), destination)
    onnx.save(model(3.0), destination, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    staged.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # its data belonged to the replaced file


def test_a_location_entry_split_across_reads_is_found(tmp_path):
    path = tmp_path / "bytes"
    for offset in range(len(LOCATION_ENTRY) + 2):
        path.write_bytes(b"x" * (16 - offset) + LOCATION_ENTRY + b"y" * 7)
        assert _mentions(path, LOCATION_ENTRY, chunk=16)
    path.write_bytes(b"x" * 40 + LOCATION_ENTRY[:-1] + b"y" * 40)
    assert not _mentions(path, LOCATION_ENTRY, chunk=16)


def test_only_data_named_after_the_model_and_read_by_nothing_else_is_removed(tmp_path):
    for location, shared, gone in [("m.onnx_data", False, True), ("m.onnx.3.data", False, True),
                                   ("m.onnx.data", True, False), ("m.data", False, False)]:
        folder = tmp_path / location / str(shared)
        folder.mkdir(parents=True)
        onnx.save(model(1.0), folder / "m.onnx", save_as_external_data=True, location=location, size_threshold=0)
        if shared:
            (folder / "copy.onnx").write_bytes((folder / "m.onnx").read_bytes())
        staged = stage_model(model(2.0), folder / "m.onnx")
        staged.commit()
        assert (folder / location).exists() is not gone, location
        assert bool(staged.kept) is not gone
