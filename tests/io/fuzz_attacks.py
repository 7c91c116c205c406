"""External-data attacks: every place a tensor can keep external data, times hostile locations and fields.

Each case is a folder `model/` (model.onnx and its files) beside `outside/` (secret.bin, which no command may
open) and a `cwd/` (holding its own secret.bin, for locations resolved against the working directory)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WEIGHTS = np.arange(16, dtype=np.float32).reshape(4, 4)
SECRET = WEIGHTS.tobytes() * 4  # the same bytes: a read of it would be silent


@dataclass
class Attack:
    name: str
    root: Path
    refuse: bool = True  # False: a benign control that must be accepted

    @property
    def model(self) -> Path:
        return self.root / "model" / "model.onnx"

    @property
    def outside(self) -> list[Path]:
        return [self.root / "outside", self.root / "outside" / "secret.bin", self.root / "cwd",
                self.root / "cwd" / "secret.bin"]


def _external(tensor: TensorProto, fields: dict[str, str]) -> None:
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.ClearField("int64_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (fields.items() if isinstance(fields, dict) else fields):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _w(name: str = "w") -> TensorProto:
    return numpy_helper.from_array(WEIGHTS, name)


def _model(graph: onnx.GraphProto, functions=()) -> onnx.ModelProto:
    for node in graph.node:  # y = f(x) + z: a second input for freeze to fill
        node.output[:] = ["y0" if name == "y" else name for name in node.output]
    graph.node.append(helper.make_node("Add", ["y0", "z"], ["y"]))
    graph.input.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 4]))
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("local", 1)] if functions else [])
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions), ir_version=9)


def _io():
    return ([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])])


def place_initializer(fields):
    w = _w()
    _external(w, fields)
    inputs, outputs = _io()
    return _model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", inputs, outputs, [w]))


def place_constant(fields):
    w = _w("c")
    _external(w, fields)
    inputs, outputs = _io()
    nodes = [helper.make_node("Constant", [], ["w"], value=w), helper.make_node("MatMul", ["x", "w"], ["y"])]
    return _model(helper.make_graph(nodes, "g", inputs, outputs))


def place_subgraph(fields):
    w = _w("c")
    _external(w, fields)
    inputs, outputs = _io()
    branch = lambda name, body: helper.make_graph(  # noqa: E731
        body, name, [], [helper.make_tensor_value_info("w_" + name, TensorProto.FLOAT, [4, 4])])
    then = branch("then", [helper.make_node("Constant", [], ["w_then"], value=w)])
    other = branch("else", [helper.make_node("Constant", [], ["w_else"], value=_w("d"))])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["w"], then_branch=then, else_branch=other),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    zero = numpy_helper.from_array(np.array(0, dtype=np.float32), "zero")
    return _model(helper.make_graph(nodes, "g", inputs, outputs, [zero]))


def place_function(fields):
    w = _w("c")
    _external(w, fields)
    inputs, outputs = _io()
    body = [helper.make_node("Constant", [], ["w"], value=w), helper.make_node("MatMul", ["x", "w"], ["y"])]
    func = helper.make_function("local", "Proj", ["x"], ["y"], body, [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("Proj", ["x"], ["y"], domain="local")]
    return _model(helper.make_graph(nodes, "g", inputs, outputs), [func])


def _sparse(fields, part: str):
    values = numpy_helper.from_array(WEIGHTS.reshape(-1)[:4].copy(), "w")
    indices = numpy_helper.from_array(np.array([0, 5, 10, 15], dtype=np.int64), "w_indices")
    _external(values if part == "values" else indices, fields)
    sparse = helper.make_sparse_tensor(values, indices, [4, 4])
    inputs, outputs = _io()
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", inputs, outputs)
    graph.sparse_initializer.append(sparse)
    return _model(graph)


def place_sparse_values(fields):
    return _sparse(fields, "values")


def place_sparse_indices(fields):
    return _sparse(fields, "indices")


PLACES: dict[str, Callable] = {
    "initializer": place_initializer, "constant": place_constant, "subgraph": place_subgraph,
    "function": place_function, "sparse-values": place_sparse_values, "sparse-indices": place_sparse_indices,
}


def _setup(root: Path) -> None:
    for sub in ("model", "outside", "cwd"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "outside" / "secret.bin").write_bytes(SECRET)
    (root / "cwd" / "secret.bin").write_bytes(SECRET)
    (root / "fill").mkdir(exist_ok=True)
    np.save(root / "fill" / "x.npy", np.ones((2, 4), dtype=np.float32))  # freeze's fill, in an untraced folder
    (root / "model" / "w.bin").write_bytes(SECRET)  # a good file, big enough for every placement


def _loc(location: str, **extra) -> dict[str, str]:
    return {"location": location, **extra}


# name -> (fields, prepare(root) or None, refuse)
LOCATIONS: dict[str, tuple] = {
    "absolute": (lambda r: _loc(str(r / "outside" / "secret.bin")), None),
    "dotdot": (lambda r: _loc("../outside/secret.bin"), None),
    "backslash": (lambda r: _loc("..\\outside\\secret.bin"), None),
    "unc": (lambda r: _loc("\\\\server\\share\\secret.bin"), None),
    "drive": (lambda r: _loc("C:secret.bin"), None),
    "home": (lambda r: _loc("~/secret.bin"), None),
    "url": (lambda r: _loc("file:///etc/passwd"), None),
    "nul": (lambda r: _loc("w.bin\x00../outside/secret.bin"), None),
    "symlink": (lambda r: _loc("link.bin"),
                lambda r: os.symlink(r / "outside" / "secret.bin", r / "model" / "link.bin")),
    "symlink-dir": (lambda r: _loc("sub/secret.bin"), lambda r: os.symlink(r / "outside", r / "model" / "sub")),
    "hardlink": (lambda r: _loc("hard.bin"), lambda r: os.link(r / "outside" / "secret.bin", r / "model" / "hard.bin")),
    "fifo": (lambda r: _loc("pipe.bin"), lambda r: os.mkfifo(r / "model" / "pipe.bin")),
    "dev-zero": (lambda r: _loc("/dev/zero"), None),
    "relative-to-cwd": (lambda r: _loc("secret.bin"), None),
    "directory": (lambda r: _loc("folder"), lambda r: (r / "model" / "folder").mkdir()),
    "missing": (lambda r: _loc("missing.bin"), None),
    "empty": (lambda r: _loc(""), None),
    "no-location": (lambda r: {"offset": "0"}, None),
    "too-long": (lambda r: _loc("a" * 300 + ".bin"), None),
    "too-long-path": (lambda r: _loc("/".join(["d" * 200] * 30)), None),
    "negative-offset": (lambda r: _loc("w.bin", offset="-16"), None),
    "negative-length": (lambda r: _loc("w.bin", length="-64"), None),
    "text-offset": (lambda r: _loc("w.bin", offset="zero"), None),
    "float-offset": (lambda r: _loc("w.bin", offset="0.5"), None),
    "huge-offset": (lambda r: _loc("w.bin", offset=str(2**70)), None),
    "short-length": (lambda r: _loc("w.bin", length="12"), None),
    "long-length": (lambda r: _loc("w.bin", length="128"), None),
    "past-end": (lambda r: _loc("w.bin", offset="250"), None),
    "repeated-key": (lambda r: [("location", "w.bin"), ("offset", "0"), ("offset", "64")], None),
    "unknown-key": (lambda r: _loc("w.bin", rogue="1"), None),
    "placeholder": (lambda r: _loc("__graphfix_weights_not_loaded__"),  # graphfix's own, a file of that name there
                    lambda r: (r / "model" / "__graphfix_weights_not_loaded__").write_bytes(SECRET)),
}
CONTROLS = {"good": lambda r: _loc("w.bin"), "good-offset": lambda r: _loc("w.bin", offset="64")}


def build_attacks(base: Path) -> list[Attack]:
    attacks: list[Attack] = []
    for place, make in PLACES.items():
        for name, (fields, prepare) in LOCATIONS.items():
            attacks.append(_write(base / f"{place}-{name}", make, fields, prepare, refuse=True,
                                  name=f"{place}/{name}"))
        for name, fields in CONTROLS.items():
            attacks.append(_write(base / f"{place}-{name}", make, fields, None, refuse=place.startswith("sparse"),
                                  name=f"{place}/{name}"))
    return attacks


def _write(root: Path, make, fields, prepare, refuse: bool, name: str) -> Attack:
    _setup(root)
    if prepare is not None:
        prepare(root)
    model = make(fields(root))
    (root / "model" / "model.onnx").write_bytes(model.SerializeToString())
    return Attack(name, root, refuse)
