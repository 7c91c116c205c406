"""#20 item 3: external data resolves against the model's folder only, never against the working directory.

The model keeps two tensors in external data: `four`, an int64 vector that onnxruntime's symbolic shape inference
computes with (it reads initializers with onnx's numpy_helper, which resolves locations against the working
directory), and the weight `w`. The working directory holds what such a resolution would find: a decoy file of the
data's name and a folder of the data's name linked to outside/ (with a copy of the data there).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from fuzz_opened import READS, OpenWatch

EXTERNAL = ("four", "w")


def baked_model() -> onnx.ModelProto:
    """x[T, B, 16] -> Reshape(Concat([7], B*4, [4])) (a size baked at export: GF004 repairs it), then a weight."""
    const = {"len": [7], "four": [4], "one": [1], "zero": [0]}
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "one_s"], ["b"], name="batch", axis=0),
        helper.make_node("Unsqueeze", ["b", "zero"], ["b1"], name="unsqueeze"),
        helper.make_node("Mul", ["b1", "four"], ["bh"], name="heads"),
        helper.make_node("Concat", ["len", "bh", "four"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"], name="reshape"),
        helper.make_node("Mul", ["r", "gain"], ["g"], name="gain"),
        helper.make_node("MatMul", ["g", "w"], ["y"], name="project"),
    ]
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in const.items()]
    inits += [numpy_helper.from_array(np.array(1, np.int64), "one_s"),
              numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "w")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", 16]),
                                           helper.make_tensor_value_info("gain", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", "B4", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def save_external(model: onnx.ModelProto, folder: Path, location: str, names=EXTERNAL) -> Path:
    """Write `model` into `folder` with the named initializers in external data at `location`."""
    data = b""
    for tensor in model.graph.initializer:
        if tensor.name in names:
            raw = tensor.raw_data
            onnx.external_data_helper.set_external_data(tensor, location=location, offset=len(data),
                                                        length=len(raw))
            tensor.ClearField("raw_data")
            data += raw
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    (folder / location).write_bytes(data)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def planted(sandbox):
    """The model (data at `weights/model.onnx.data`) and a second one (data at `model.onnx.data`); in the working
    directory a `weights` link to outside/ holding a copy of the data, and a decoy `model.onnx.data` watched."""
    nested = save_external(baked_model(), sandbox.model_dir, "weights/model.onnx.data")
    flat_dir = sandbox.model_dir / "flat"
    flat_dir.mkdir()
    flat = save_external(baked_model(), flat_dir, "model.onnx.data")
    (sandbox.outside / "model.onnx.data").write_bytes((sandbox.model_dir / "weights/model.onnx.data").read_bytes())
    os.symlink(sandbox.outside, sandbox.cwd / "weights")
    decoy = sandbox.cwd / "model.onnx.data"
    decoy.write_bytes((flat_dir / "model.onnx.data").read_bytes())
    watch = OpenWatch([str(decoy)], READS)
    sandbox.touched()
    yield nested, flat, watch
    watch.close()


def _outputs(path: Path) -> np.ndarray:
    rng = np.random.default_rng(0)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"x": rng.standard_normal((7, 2, 16)), "gain": np.ones(1), "g": rng.standard_normal((7, 8, 4))}
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v.astype(np.float32) for k, v in feeds.items() if k in names})[0]


COMMANDS = {  # the arguments, and the exit code (the model fails at run time where T is not 7)
    "diagnose": (["diagnose", "{model}"], 1),
    "diagnose --static": (["diagnose", "--static", "{model}"], 0),
    "check": (["check", "{model}"], 1),
    "repair": (["repair", "{model}", "-o", "{out}"], 0),
    "set-shape": (["set-shape", "{model}", "--shape", "x=7xBx16", "-o", "{out}"], 0),
    "extract": (["extract", "{model}", "--inputs", "x,gain", "--outputs", "y", "-o", "{out}"], 1),
    "freeze": (["freeze", "{model}", "--input", "gain=1", "-o", "{out}"], 1),
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("which", ["nested", "flat"])
def test_external_data_is_never_resolved_against_the_working_directory(sandbox, planted, command, which):
    """Run from another folder, each command reads the data beside the model only, and gives what it gives when
    run from the model's own folder (where a resolution against the working directory finds the right file)."""
    model = planted[0] if which == "nested" else planted[1]
    arguments, code = COMMANDS[command]
    args = [a.format(model=model, out=sandbox.root / "out" / "o.onnx") for a in arguments]
    done = sandbox.run(*args)
    assert sandbox.touched() == []
    assert planted[2].events() == []
    assert "Traceback" not in done.stderr, done.stderr
    at_home = sandbox.run(*[a.replace("/out/", "/home/") for a in args], cwd=model.parent)
    assert done.returncode == at_home.returncode == code, (done.stdout + done.stderr, at_home.stdout + at_home.stderr)
    if command.startswith("diagnose"):
        assert done.stdout == at_home.stdout
    if "{out}" in arguments and code == 0:
        assert np.array_equal(_outputs(sandbox.root / "out" / "o.onnx"), _outputs(sandbox.root / "home" / "o.onnx"))


def test_onnxsim_is_never_handed_a_tensor_that_names_a_file(tmp_path):
    """onnxsim's child loads what it is sent with onnx.load, which resolves external data itself: a Constant's
    external tensor (top-level initializers are sent as graph inputs) means no simplification, said so."""
    from fuzz_attacks import PLACES

    from graphfix.pipeline.simplify import simplify

    model = PLACES["constant"]({"location": "w.bin"})
    result = simplify(model, base_dir=tmp_path)
    assert not result.applied
    assert result.message == ("simplification skipped: a tensor outside the graph's initializers keeps its values "
                              "in external data")


def _external(name: str, location: str, dtype=TensorProto.INT64, dims=()) -> onnx.TensorProto:
    """A tensor of `dims` whose 8 bytes per element lie in `location` (beside the model: its own folder)."""
    tensor = onnx.TensorProto(name=name, data_type=dtype, dims=list(dims))
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("length", str(8 * int(np.prod(dims or [1]))))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _attribute_models() -> dict[str, onnx.ModelProto]:
    """Constants kept in external data where graphfix's analysis folds values (helper 36 read the working
    directory's file through onnx's numpy_helper with each, and printed its bytes as a Reshape's shape):
    ConstantOfShape's fill value, a Constant node's value, and a Range's limit (which decides whether onnx's
    shape inference may propagate data)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])
    two = helper.make_tensor("two", TensorProto.INT64, [1], [2])
    fill = [helper.make_node("ConstantOfShape", ["two"], ["shape"], value=_external("fill", "data.bin", dims=[1])),
            helper.make_node("Reshape", ["x", "shape"], ["y"])]
    node = [helper.make_node("Constant", [], ["shape"], value=_external("shape", "data.bin", dims=[2])),
            helper.make_node("Reshape", ["x", "shape"], ["y"])]
    ranged = [helper.make_node("Constant", [], ["limit"], value=_external("limit", "data.bin")),
              helper.make_node("Range", ["zero", "limit", "one"], ["r"]),
              helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
              helper.make_node("Add", ["x", "rf"], ["y"])]
    scalars = [helper.make_tensor(n, TensorProto.INT64, [], [v]) for n, v in (("zero", 0), ("one", 1))]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return {name: helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                                    opset_imports=[helper.make_opsetid("", 17)])
            for name, nodes, inits in (("fill", fill, [two]), ("constant", node, []), ("range", ranged, scalars))}


@pytest.mark.parametrize("place", ["fill", "constant", "range"])
@pytest.mark.parametrize("command", [["diagnose", "--static"], ["diagnose"], ["repair", "-o", "OUT"]])
def test_external_data_in_a_node_attribute_is_never_read_from_the_working_directory(sandbox, place, command):
    """The model's folder holds `data.bin` (zeros, as the checks ask); the working directory holds another
    `data.bin`, watched. Nothing reads it, and no byte of it shows in the report."""
    path = sandbox.model_dir / "model.onnx"
    path.write_bytes(_attribute_models()[place].SerializeToString())
    (sandbox.model_dir / "data.bin").write_bytes(bytes(16))
    decoy = sandbox.cwd / "data.bin"
    decoy.write_bytes(b"hello-se" * 2)
    watch = OpenWatch([str(decoy)], READS)
    try:
        args = [str(sandbox.root / "out.onnx") if a == "OUT" else a for a in command]
        done = sandbox.run(args[0], str(path), *args[1:])
        assert watch.events() == [], done.stdout + done.stderr
    finally:
        watch.close()
    said = done.stdout + done.stderr
    assert "Traceback" not in said and "internal error" not in said, said
    assert str(int.from_bytes(b"hello-se", "little")) not in said
