"""Models for the write and deletion tests (#20 items 5 and 6), built in code: HuBERT's padding-mask sample (which
`repair` changes) and a healthy MatMul (which it writes unchanged), with their weights in named data files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graphfix.io.streaming import varint  # the writer's own protobuf varint, to pad a model as a writer would

HUBERT = Path(__file__).resolve().parents[2] / "samples" / "hubert_padding_mask" / "model.onnx"


def hubert(path: Path, location: str | None = None) -> Path:
    """The sample, its weights in `location` beside it (inline without one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if location is None:
        onnx.save(onnx.load(HUBERT), path)
    else:
        onnx.save(onnx.load(HUBERT), path, save_as_external_data=True, location=location, size_threshold=0)
    return path


def healthy(path: Path, location: str | None = None, weight: float = 0.5) -> Path:
    """y = x @ w, nothing to repair; `w` (64x64) in `location` beside it."""
    w = numpy_helper.from_array(np.full((64, 64), weight, np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    if location is None:
        onnx.save(model, path)
    else:
        onnx.save(model, path, save_as_external_data=True, location=location, size_threshold=0)
    return path


def run(path: Path) -> list[np.ndarray]:
    """The model's outputs with onnxruntime (from the file: its data files are read where it names them)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in session.get_inputs():
        if i.type == "tensor(bool)":  # 32 steps: where the sample's mask, unrepaired, still broadcasts
            feeds[i.name] = np.arange(32)[None, :] >= 20
        elif i.name == "features":
            feeds[i.name] = rng.standard_normal((1, 32, 16)).astype(np.float32)
        else:
            feeds[i.name] = rng.standard_normal((2, 64)).astype(np.float32)
    return session.run(None, feeds)


def same_outputs(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def self_located(path: Path) -> Path:
    """HuBERT with every weight inside the model file itself, in a field the protobuf parser skips: each tensor's
    data location is the model's own file name."""
    proto = onnx.load(HUBERT)
    raws = [numpy_helper.to_array(t).tobytes() for t in proto.graph.initializer]
    payload = b"".join(raws)
    key, size = bytes([0xFA, 0x06]), varint(len(payload))  # field 111, length-delimited: unknown to ModelProto
    offset = 0
    for _ in range(8):  # the offsets are written in the header they follow: repeat until they settle
        position = offset
        for tensor, raw in zip(proto.graph.initializer, raws, strict=True):
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
                tensor.ClearField(field)
            del tensor.external_data[:]
            tensor.data_location = TensorProto.EXTERNAL
            for k, v in (("location", path.name), ("offset", str(position)), ("length", str(len(raw)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = k, v
            position += len(raw)
        head = proto.SerializeToString()
        if len(head) + len(key) + len(size) == offset:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(head + key + size + payload)
            return path
        offset = len(head) + len(key) + len(size)
    raise AssertionError("the offsets did not settle")
