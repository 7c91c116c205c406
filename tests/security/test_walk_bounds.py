"""Helper 118: the echo check's walk from every constant had no bound. A Reshape that bakes T (GF004's safe fix
asks the echo check) then a chain of 8 Concats, each of K copies of the one before, is K**8 paths for the walk
to a sum: a 908-byte model took 50 s and 4.1 GB under `diagnose --static` at K = 9, and past 17 GB at K = 12. Each
tensor is now walked once per way; and the check of one fix stops at its time bound (graphfix.core.budget), past
which the fix is unsafe and says why: 3,000 constants each scaling a Concat of 3,000 tensors walk 9 million
steps."""

from __future__ import annotations

import resource
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ADDRESS_SPACE = 2 << 30  # what a diagnose of a tiny model needs, with room: the walk took 4.1 GB


def _baked(nodes: list, extra: list, path):
    """X [B, T, 8] reshaped to [B, 7, 2, 4] (the element count pins T = 7), summed over its last axis as S, then
    `nodes` to Y."""
    head = [helper.make_node("Shape", ["X"], ["shape"]),
            helper.make_node("Gather", ["shape", "zero"], ["b"], axis=0),
            helper.make_node("Concat", ["b", "rest"], ["target"], axis=0),
            helper.make_node("Reshape", ["X", "target"], ["R"], name="heads"),
            helper.make_node("ReduceSum", ["R", "axes"], ["S"], keepdims=0)]
    weights = [numpy_helper.from_array(np.array([0], np.int64), "zero"),
               numpy_helper.from_array(np.array([7, 2, 4], np.int64), "rest"),
               numpy_helper.from_array(np.array([3], np.int64), "axes"), *extra]
    graph = helper.make_graph(head + nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", "T", 8])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def _diagnose(path):
    def bounded():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    return subprocess.run([sys.executable, "-m", "graphfix", "diagnose", "--static", str(path)], capture_output=True,
                          text=True, timeout=300, preexec_fn=bounded)


def test_copies_concatenated_deep_are_walked_once(tmp_path):
    chain, previous = [], "S"
    for i in range(8):
        chain.append(helper.make_node("Concat", [previous] * 9, [f"H{i}"], axis=0))
        previous = f"H{i}"
    chain.append(helper.make_node("Mul", [previous, "c"], ["Y"]))
    path = _baked(chain, [numpy_helper.from_array(np.array(3.14159, np.float32), "c")], tmp_path / "fan.onnx")
    done = _diagnose(path)
    assert done.returncode == 1 and "GF004" in done.stdout and "(safe)" in done.stdout, done.stdout + done.stderr


def test_the_echo_check_of_a_fix_stops_at_its_time_bound_and_the_fix_is_unsafe(tmp_path):
    parts = [helper.make_node("Relu", ["S"], [f"p{i}"]) for i in range(3000)]
    scaled = [helper.make_node("Mul", ["C", f"c{i}"], [f"m{i}"]) for i in range(3000)]
    nodes = [*parts, helper.make_node("Concat", [f"p{i}" for i in range(3000)], ["C"], axis=0), *scaled,
             helper.make_node("Concat", [f"m{i}" for i in range(3000)], ["Y"], axis=0)]
    constants = [numpy_helper.from_array(np.array(1.2345 + i * 1e-3, np.float32), f"c{i}") for i in range(3000)]
    done = _diagnose(_baked(nodes, constants, tmp_path / "wide.onnx"))
    assert done.returncode == 1 and "(unsafe)" in done.stdout, done.stdout + done.stderr
    assert "the echo check did not finish within 5 s" in done.stdout, done.stdout
