"""Helper 118: two ways onnxruntime was handed a model past graphfix's budgets.

- A Constant whose value lives in external data is given to onnxruntime inline (it would open the file itself):
  a 196-byte model over a 1 GiB sparse file (no byte on disk) took 6.2 GB before the probe's memory budget was
  asked, and at 6 GiB `bench` ended in an internal error (protobuf serializes no model over 2 GiB). What is given
  inline is now counted first, against the probe's budget and protobuf's limit.
- `bench` and `stream` loaded a model whose shape values onnx's data propagation holds without bound (1,000
  copies of 1,000 values concatenated 1,000 times: 4.4 GB) where `check` refused it: their session asks the same
  question as the probe's.
"""

from __future__ import annotations

import onnx
import pytest
from conftest import bounded_graphfix
from onnx import TensorProto, helper

CAP = 2 << 30  # address space: inlined, the constant took 6.2 GB
USERS = {"bench": ["--runs", "1", "--warmup", "0"], "stream": ["--steps", "1", "--feedback", "y=x"]}


def _external_constant(folder, gib: int):
    """y = x + max(c), c a Constant of `gib` GiB of floats in `w.bin`, a sparse file."""
    count = (gib << 30) // 4
    with open(folder / "w.bin", "wb") as data:
        data.truncate(count * 4)
    value = TensorProto(name="v", data_type=TensorProto.FLOAT, dims=[count], data_location=TensorProto.EXTERNAL)
    for key, entry in (("location", "w.bin"), ("offset", "0"), ("length", str(count * 4))):
        value.external_data.add(key=key, value=entry)
    nodes = [helper.make_node("Constant", [], ["c"], value=value),
             helper.make_node("ReduceMax", ["c"], ["m"], keepdims=1), helper.make_node("Add", ["x", "m"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              folder / "m.onnx")
    return folder / "m.onnx"


@pytest.mark.parametrize(("args", "gib"), [(["diagnose"], 1), (["check", "--jobs", "1"], 1),
                                           (["bench", *USERS["bench"]], 1), (["bench", *USERS["bench"]], 3)],
                         ids=["diagnose", "check", "bench", "bench-past-protobuf"])
def test_a_constant_in_external_data_is_counted_before_it_is_given_inline(tmp_path, monkeypatch, args, gib):
    monkeypatch.setenv("GRAPHFIX_MAX_PROBE_MEMORY", str(100_000_000) if gib == 1 else str(100 << 30))
    done = bounded_graphfix(args[0], str(_external_constant(tmp_path, gib)), *args[1:], seconds=120, memory=CAP)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "values in external data that onnxruntime must be given inline" in done.stdout + done.stderr, \
        done.stdout + done.stderr
    assert "internal error" not in done.stdout + done.stderr


def _propagated_past_the_budget(path):
    """y = Concat(Shape(x), c2): c2 is 1,000 copies of 1,000 copies of 1,000 values (11 KB of model)."""
    nodes = [helper.make_node("Constant", [], ["c0"], value_ints=list(range(1000)))]
    for level in (1, 2):
        nodes.append(helper.make_node("Concat", [f"c{level - 1}"] * 1000, [f"c{level}"], axis=0))
    nodes += [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Concat", ["s", "c2"], ["y"], axis=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


@pytest.mark.parametrize("command", sorted(USERS))
def test_bench_and_stream_refuse_what_the_probe_would_not_load(tmp_path, command):
    path = _propagated_past_the_budget(tmp_path / "m.onnx")
    done = bounded_graphfix(command, str(path), "--shape", "x=1", *USERS[command], seconds=120, memory=CAP)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "shape values while onnxruntime loads the model" in done.stdout + done.stderr, done.stdout + done.stderr
