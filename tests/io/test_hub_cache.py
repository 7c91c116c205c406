"""Models in the Hugging Face hub cache: every file of a snapshot is a symbolic link into the `blobs/` folder of the
same cached repository. Those links are followed; a link that leaves the cached repository is still refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from graphfix.cli import cli


def hub_snapshot(cache: Path, data_target: Path | None = None) -> Path:
    """models--org--tiny/snapshots/REV/model.onnx (+ model.onnx.data), both linked to blobs/ like the hub does."""
    repository = cache / "models--org--tiny"
    blobs, snapshot = repository / "blobs", repository / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(1024, 4), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])], [weight])
    staging = cache / "staging"
    staging.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), staging / "model.onnx",
              save_as_external_data=True, location="model.onnx.data")
    for name, blob in (("model.onnx", "aa11"), ("model.onnx.data", "bb22")):
        (staging / name).rename(blobs / blob)
        target = data_target if name.endswith(".data") and data_target is not None else blobs / blob
        os.symlink(os.path.relpath(target, snapshot), snapshot / name)
    return snapshot / "model.onnx"


def test_a_hub_cache_snapshot_loads_and_repairs(tmp_path):
    model = hub_snapshot(tmp_path)
    done = CliRunner().invoke(cli, ["diagnose", str(model)])
    assert done.exit_code == 0, done.output
    done = CliRunner().invoke(cli, ["repair", str(model), "-o", str(tmp_path / "out" / "model.onnx")])
    assert done.exit_code == 0 and "unchanged" in done.output, done.output
    assert (tmp_path / "out" / "model.onnx.data").read_bytes() == (model.parent / "model.onnx.data").read_bytes()


def test_a_link_leaving_the_cached_repository_is_refused(tmp_path):
    elsewhere = tmp_path / "models--other--repo" / "blobs" / "cc33"
    elsewhere.parent.mkdir(parents=True)
    model = hub_snapshot(tmp_path, data_target=elsewhere)
    (model.parent / "model.onnx.data").resolve().parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp_path / "models--org--tiny" / "blobs" / "bb22", elsewhere)
    done = CliRunner().invoke(cli, ["diagnose", str(model)])
    assert done.exit_code == 2 and "symbolic link" in done.output
