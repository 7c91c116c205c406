"""Helper 148: every external data file of a model is held open and mapped (two descriptors each), so a model kept in
more files than the open-file limit allows (torch saves one file per tensor past 2 GB) made `diagnose` report a
crashed rule and `bench` an internal error under `ulimit -n 1024`. The soft limit is now raised to the hard one
when a data file cannot be opened or mapped; where the hard limit is too low too, every command says so in one
line."""

from __future__ import annotations

import resource
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

FILES = 400  # 800 descriptors, past the soft limit below
SOFT = 512
COMMANDS = [("diagnose", "m.onnx"), ("check", "m.onnx"), ("repair", "m.onnx", "-o", "out/o.onnx"),
            ("bench", "m.onnx", "--runs", "1")]


@pytest.fixture(scope="module")
def many_files(tmp_path_factory):
    """m.onnx: X + w0 + w1 + ... + w399, each weight in its own data file."""
    folder = tmp_path_factory.mktemp("many")
    weights, nodes, previous = [], [], "X"
    for i in range(FILES):
        weight = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
        for key, value in (("location", f"w{i}.bin"), ("offset", "0"), ("length", "16")):
            weight.external_data.add(key=key, value=value)
        (folder / f"w{i}.bin").write_bytes(np.full(4, 0.5, np.float32).tobytes())
        weights.append(weight)
        output = "Y" if i == FILES - 1 else f"a{i}"
        nodes.append(helper.make_node("Add", [previous, f"w{i}"], [output], name=f"add{i}"))
        previous = output
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "m.onnx")
    return folder


def _run(folder, command, hard: int | None):
    """graphfix `command` in `folder` with the soft limit on open files at SOFT (and the hard one at `hard`)."""
    def limited():
        resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, hard or resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    return subprocess.run([sys.executable, "-m", "graphfix", *command], cwd=folder, capture_output=True, text=True,
                          timeout=300, preexec_fn=limited, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_model_in_more_data_files_than_the_soft_limit_is_read(many_files, command):
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4 * SOFT:
        pytest.skip("the hard limit on open files leaves no room above the soft one")
    done = _run(many_files, command, hard=None)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_model_in_more_data_files_than_the_hard_limit_is_refused_in_one_line(many_files, command):
    done = _run(many_files, command, hard=SOFT)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "too many open files" in lines[0] and "`ulimit -n`" in lines[0], lines
    assert "internal error" not in lines[0] and "crashed" not in lines[0], lines
