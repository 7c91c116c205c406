"""External data reached other than through the main graph: the default of a model-local function's attribute (a
node reads it with `ref_attr_name`) and a training graph. Found by a review: the function's default was never
checked, onnxruntime read it by path, and a hard link out of the model's folder leaked the outside file's bytes
into graphfix's own error message (a Reshape to the "shape" the file held)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper

SHAPE = np.array([1, 4], np.int64)  # the default's bytes: x [4] reshaped to [1, 4]


def _external(name: str, location: str) -> TensorProto:
    tensor = helper.make_tensor(name, TensorProto.INT64, [2], SHAPE.tobytes(), raw=True)
    onnx.external_data_helper.set_external_data(tensor, location=location, offset=0, length=16)
    tensor.ClearField("raw_data")
    return tensor


def function_default_model(folder: Path, location: str) -> Path:
    """y = F(x), F reshaping x by its attribute `v`, whose default is 2 int64 in `location`."""
    const = helper.make_node("Constant", [], ["shape"])
    const.attribute.append(AttributeProto(name="value", ref_attr_name="v", type=AttributeProto.TENSOR))
    body = [const, helper.make_node("Reshape", ["X", "shape"], ["Y"])]
    function = helper.make_function("my", "F", ["X"], ["Y"], body, [helper.make_opsetid("", 17)])
    function.attribute_proto.append(helper.make_attribute("v", _external("default", location)))
    graph = helper.make_graph([helper.make_node("F", ["x"], ["y"], domain="my")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, functions=[function], ir_version=9,
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my", 1)])
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("how", ["hard link", "symbolic link", "parent folder"])
def test_a_function_default_read_from_outside_the_folder_is_refused(sandbox, how):
    secret = sandbox.outside / "secret.bin"
    location = "w.bin"
    if how == "hard link":
        os.link(secret, sandbox.model_dir / location)
    elif how == "symbolic link":
        (sandbox.model_dir / location).symlink_to(secret)
    else:
        location = "../outside/secret.bin"
    model = function_default_model(sandbox.model_dir, location)
    sandbox.touched()
    for command in (("diagnose",), ("repair", "-o", str(sandbox.root / "o.onnx"))):
        done = sandbox.run(*command[:1], str(model), *command[1:])
        assert done.returncode == 2, done.stdout + done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "default of attribute 'v'" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert sandbox.touched() == [] and not (sandbox.root / "o.onnx").exists()


def test_a_function_default_in_the_folder_is_read_as_the_model_reads_it(sandbox):
    (sandbox.model_dir / "w.bin").write_bytes(SHAPE.tobytes())
    model = function_default_model(sandbox.model_dir, "w.bin")
    done = sandbox.run("diagnose", str(model))
    assert done.returncode == 0 and "no findings" in done.stdout, done.stdout + done.stderr


def test_a_training_graph_read_from_outside_the_folder_is_refused(sandbox):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)])
    training = model.training_info.add()
    training.initialization.CopyFrom(helper.make_graph([], "init", [], [], [_external("t", "../outside/secret.bin")]))
    path = sandbox.model_dir / "m.onnx"
    path.write_bytes(model.SerializeToString())
    sandbox.touched()
    done = sandbox.run("diagnose", str(path))
    assert done.returncode == 2 and "training info" in done.stderr, done.stdout + done.stderr
    assert sandbox.touched() == []


def test_a_tensor_that_also_names_a_function_attribute_is_checked(sandbox):
    """Found by a review: an attribute in the main graph holding an external tensor and a `ref_attr_name` was
    skipped as a mere reference, and onnxruntime read the tensor through a hard link out of the folder."""
    os.link(sandbox.outside / "secret.bin", sandbox.model_dir / "w.bin")
    const = helper.make_node("Constant", [], ["shape"])
    attr = AttributeProto(name="value", ref_attr_name="v", type=AttributeProto.TENSOR)
    attr.t.CopyFrom(_external("value", "w.bin"))
    const.attribute.append(attr)
    graph = helper.make_graph([const, helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = sandbox.model_dir / "m.onnx"
    path.write_bytes(helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)])
                     .SerializeToString())
    sandbox.touched()
    done = sandbox.run("diagnose", str(path))
    assert done.returncode == 2 and "hard link" in done.stderr, done.stdout + done.stderr
    assert sandbox.touched() == []


@pytest.mark.parametrize("reader", ["function default", "link to the model", "link from another folder"])
def test_a_report_never_replaces_data_only_a_function_default_or_a_linked_model_reads(sandbox, reader):
    """Found by reviews: `check --output-file w.bin` replaced the data a function's default read (the wire walk
    that lists a model's data files skipped function defaults), the data of a model named through a link, and
    (helper 63) the data beside a link in another folder than the model, which is the data loading reads: the
    check looked beside the model."""
    folder = sandbox.model_dir / "real" if reader == "link from another folder" else sandbox.model_dir
    folder.mkdir(exist_ok=True)
    (folder / "w.bin").write_bytes(SHAPE.tobytes())
    model = function_default_model(folder, "w.bin")
    if reader == "link to the model":
        (sandbox.model_dir / "link.onnx").symlink_to(model.name)
        model = sandbox.model_dir / "link.onnx"
    if reader == "link from another folder":
        (sandbox.model_dir / "links").mkdir()
        (sandbox.model_dir / "links" / "w.bin").write_bytes(SHAPE.tobytes())
        (sandbox.model_dir / "links" / "m.onnx").symlink_to(f"../real/{model.name}")
        model, folder = sandbox.model_dir / "links" / "m.onnx", sandbox.model_dir / "links"
    done = sandbox.run("check", str(model), "--output-file", str(folder / "w.bin"))
    assert done.returncode == 2 and "would overwrite the input" in done.stderr, done.stdout + done.stderr
    assert (folder / "w.bin").read_bytes() == SHAPE.tobytes()
