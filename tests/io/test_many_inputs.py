"""A graph of many inputs and outputs and no node, which no node budget counts (helper 108): GF010's gate walked
back from each output axis reading every graph input again, and each onnxruntime run filtered its feeds against
the input names listed anew for each feed; 20,000 of them (1 MB) ran past 2 minutes, `diagnose --static` too.
Each command now ends within a bound that the quadratic walks took several times over."""

from __future__ import annotations

import subprocess
import sys

import pytest
from onnx import TensorProto, helper

COUNT = 20_000


@pytest.mark.parametrize("static", [True, False])
def test_many_inputs_and_outputs_are_read_once_each(tmp_path, static):
    values = [helper.make_tensor_value_info(f"i{k}", TensorProto.FLOAT, ["B", 1]) for k in range(COUNT)]
    model = helper.make_model(helper.make_graph([], "g", values, values), opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "many.onnx").write_bytes(model.SerializeToString())
    done = subprocess.run([sys.executable, "-m", "graphfix", "diagnose", "many.onnx", *(["--static"] * static)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "no findings" in done.stdout, done.stdout + done.stderr
