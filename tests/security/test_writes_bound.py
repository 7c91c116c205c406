"""Security review h148: a changed model writes no more external data than its input holds. Tensors naming the
same bytes share them in the output, holes stay holes, and tensors that overlap otherwise are refused (one line,
exit 2, nothing written) once they would write more than WRITE_MARGIN past the input's data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from writes_kit import hubert, run, same_outputs

from graphfix.io.write_bound import WRITE_MARGIN, WRITE_SHARE

REGION = 64 << 10  # bytes each shared tensor reads


def gathers(folder: Path, ranges: list[tuple[int, int]], data: bytes | int, spell=lambda i: "w.bin") -> Path:
    """A model whose initializer W{i} (floats) reads bytes ranges[i] = (offset, length) of w.bin, each through a
    Gather summed into Y, plus a dead node (GF001's safe fix changes the model). `data`: the file's bytes, or the
    length of a file that is one hole."""
    with open(folder / "w.bin", "wb") as f:
        f.write(data) if isinstance(data, bytes) else f.truncate(data)
    inits, nodes = [], []
    for i, (offset, length) in enumerate(ranges):
        tensor = onnx.TensorProto(name=f"W{i}", data_type=TensorProto.FLOAT, dims=[length // 4],
                                  data_location=TensorProto.EXTERNAL)
        for key, value in (("location", spell(i)), ("offset", offset), ("length", length)):
            tensor.external_data.add(key=key, value=str(value))
        inits.append(tensor)
        nodes.append(helper.make_node("Gather", [f"W{i}", "idx"], [f"g{i}"]))
    nodes += [helper.make_node("Sum", [f"g{i}" for i in range(len(ranges))], ["Y"]),
              helper.make_node("Neg", ["Y"], ["dead"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N"])], inits)
    path = folder / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def outputs(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"idx": np.array([0, 5, 100, 1000], np.int64)})[0]


def data_of(out: Path) -> Path:
    return out.parent / f"{out.name}.data"


def test_tensors_naming_the_same_bytes_share_one_copy(sandbox):
    """200 initializers reading one 64 KiB region: the old writer wrote 200 copies (12.5 MiB), now one."""
    region = np.random.default_rng(0).random(REGION // 4, dtype=np.float32).tobytes()
    model = gathers(sandbox.model_dir, [(0, REGION)] * 200, region)
    out = sandbox.root / "out" / "o.onnx"
    done = sandbox.run("repair", str(model), "-o", str(out), "--no-simplify")
    assert done.returncode == 0 and "repaired" in done.stdout, done.stdout + done.stderr
    assert data_of(out).stat().st_size == REGION
    np.testing.assert_array_equal(outputs(out), outputs(model))
    assert sandbox.touched() == []


def test_overlapping_tensors_past_the_margin_are_refused_and_nothing_is_written(sandbox):
    """Tensors of 1 MiB each, 4 bytes apart: no two name the same bytes, together they write far more than the file
    holds. Just past the bound: the old writer wrote them all (exit 0)."""
    length = 1 << 20
    count = int((WRITE_MARGIN + length * (1 + WRITE_SHARE)) // length) + 2
    data = np.random.default_rng(0).random((length + 4 * count) // 4, dtype=np.float32).tobytes()
    model = gathers(sandbox.model_dir, [(4 * i, length) for i in range(count)], data)
    out = sandbox.root / "out" / "o.onnx"
    done = sandbox.run("repair", str(model), "-o", str(out), "--no-simplify")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert "Traceback" not in done.stderr and "overlap" in done.stderr and "nothing written" in done.stderr, lines
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (sandbox.root / "out").exists()  # not even the folder, nor a staging folder in it
    assert sandbox.touched() == []


def test_overlapping_tensors_within_the_margin_are_written(sandbox):
    """The same overlap, small: what a fix that copies a weight could need is still written."""
    length = 1 << 20
    data = np.random.default_rng(0).random((length + 12) // 4, dtype=np.float32).tobytes()
    model = gathers(sandbox.model_dir, [(4 * i, length) for i in range(3)], data)
    out = sandbox.root / "out" / "o.onnx"
    done = sandbox.run("repair", str(model), "-o", str(out), "--no-simplify")
    assert done.returncode == 0, done.stdout + done.stderr
    np.testing.assert_array_equal(outputs(out), outputs(model))


def test_a_weight_in_a_hole_stays_a_hole_in_a_changed_model(sandbox):
    """A 256 MiB weight that is one hole (nothing on disk): the old writer wrote 256 MiB of zeros."""
    length = 256 << 20
    model = gathers(sandbox.model_dir, [(0, length)], length)
    if (sandbox.model_dir / "w.bin").stat().st_blocks * 512 > 1 << 20:
        pytest.skip("this file system does not keep holes")
    out = sandbox.root / "out" / "o.onnx"
    done = sandbox.run("repair", str(model), "-o", str(out), "--no-simplify")
    assert done.returncode == 0 and "repaired" in done.stdout, done.stdout + done.stderr
    assert data_of(out).stat().st_size == length  # the apparent size: what the tensor declares
    assert data_of(out).stat().st_blocks * 512 <= 1 << 20  # the allocated size
    np.testing.assert_array_equal(outputs(out), np.zeros(4, np.float32))


def test_a_model_saved_by_onnx_with_external_data_is_repaired_as_before(sandbox):
    """HuBERT's sample saved by onnx.save_model with its weights in a data file: repaired (changed), the output's
    data is written in full and gives what the inline sample's repair gives."""
    inline = hubert(sandbox.model_dir / "inline" / "model.onnx")
    external = hubert(sandbox.model_dir / "external" / "model.onnx", "model.onnx.data")
    outs = []
    for model in (inline, external):
        out = sandbox.root / "out" / model.parent.name / "o.onnx"
        done = sandbox.run("repair", str(model), "-o", str(out), "--no-simplify")
        assert done.returncode == 0 and "repaired" in done.stdout, done.stdout + done.stderr
        outs.append(out)
    assert data_of(outs[1]).stat().st_blocks * 512 >= os.path.getsize(sandbox.model_dir / "external" /
                                                                      "model.onnx.data") // 2
    assert same_outputs(run(outs[1]), run(outs[0]))


def test_a_data_file_spelled_many_ways_is_held_once(sandbox):
    """Red team 151: `w.bin`, `./w.bin`, `.//w.bin` ... name one file, and the bound counted it once per spelling,
    so that each spelling's copy fit: 60 of a 4 MiB file wrote 240 MiB. Counted by the file, past the margin now."""
    region = 4 << 20
    count = int((region * (1 + WRITE_SHARE) + WRITE_MARGIN) // region) + 2
    model = gathers(sandbox.model_dir, [(0, region)] * count, np.ones(region // 4, np.float32).tobytes(),
                    spell=lambda i: "." + "/" * i + "w.bin" if i else "w.bin")
    out = sandbox.root / "out" / "o.onnx"
    done = sandbox.run("repair", str(model), "-o", str(out), "--no-simplify")
    assert done.returncode == 2 and "overlap" in done.stderr, done.stdout + done.stderr
    assert not out.parent.exists() or not any(out.parent.iterdir())
