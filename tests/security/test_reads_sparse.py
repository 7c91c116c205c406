"""#20 item 8: a sparse data file (a few KiB on disk, gigabytes long) is no disk bomb: an unchanged repair copies
only the bytes the tensors use."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

HOLE = 2 << 30  # 2 GiB, nearly all of it a hole


def external_model(folder: Path) -> Path:
    """Y = X + W, W (256 floats) at offset 0 of model.onnx.data."""
    weights = numpy_helper.from_array(np.arange(256, dtype=np.float32), "W")
    (folder / "model.onnx.data").write_bytes(weights.raw_data)
    onnx.external_data_helper.set_external_data(weights, location="model.onnx.data", offset=0, length=1024)
    weights.ClearField("raw_data")
    graph = helper.make_graph([helper.make_node("Add", ["X", "W"], ["Y"])], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 256])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 256])], [weights])
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_an_unchanged_repair_copies_only_what_the_tensors_use(sandbox):
    model = external_model(sandbox.model_dir)  # W: 256 floats at offset 0 of model.onnx.data
    data = sandbox.model_dir / "model.onnx.data"
    used = data.stat().st_size
    os.truncate(data, HOLE)
    if data.stat().st_blocks * 512 > 1 << 20:
        pytest.skip("this file system does not keep holes")
    out = sandbox.root / "out" / "o.onnx"
    done = sandbox.run("repair", str(model), "-o", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    copied = out.parent / "o.onnx.data"
    assert copied.stat().st_size == used  # the apparent size: what the tensors declare
    assert copied.stat().st_blocks * 512 <= 64 << 10  # the allocated size
    x = np.ones((2, 256), np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    np.testing.assert_array_equal(got, x + np.arange(256, dtype=np.float32))
    assert sandbox.touched() == []


def test_copy_used_keeps_the_holes_below_the_end(tmp_path):
    """Data after a hole, within the tensors' end: the hole stays a hole, the data is copied where it was."""
    from graphfix.io.held import HeldFile, copy_used

    src = tmp_path / "src.data"
    with open(src, "wb") as f:
        f.write(b"a" * 4096)
        f.seek(64 << 20)
        f.write(b"b" * 4096)
        f.seek(HOLE)
        f.write(b"c")
    dst = tmp_path / "dst.data"
    copy_used(HeldFile(src, "src"), dst, (64 << 20) + 4096)
    blob = dst.read_bytes()
    assert len(blob) == (64 << 20) + 4096
    assert blob[:4096] == b"a" * 4096 and blob[-4096:] == b"b" * 4096 and blob.count(0) == len(blob) - 8192
    if src.stat().st_blocks * 512 < 1 << 20:  # the file system keeps holes
        assert dst.stat().st_blocks * 512 <= 64 << 10


@pytest.mark.parametrize("offset", [4096 + 8, 4096 - 8])  # the range starts in data, or in a hole before it
def test_copy_range_keeps_the_holes_of_a_range_and_ends_after_it(tmp_path, offset):
    """A changed model's data file gets each tensor's range (`copy_range`): holes around and inside it stay holes,
    the data lands at its place from the output's position, and the output ends at the range's end even where
    the range ends in a hole."""
    from graphfix.io.held import HeldFile, copy_range, data_bytes

    src = tmp_path / "src.data"
    with open(src, "wb") as f:
        f.seek(4096)
        f.write(b"a" * 4096)
        f.seek(64 << 20)
        f.write(b"b" * 4096)
        f.truncate(HOLE)
    length = (128 << 20) - offset  # past the b's: it ends in the hole
    dst = tmp_path / "dst.data"
    with open(dst, "wb") as out:
        out.write(b"head")
        held = HeldFile(src, "src")
        copy_range(held, out, offset, length)
        assert out.tell() == 4 + length
        out.write(b"tail")
    blob = dst.read_bytes()
    expected = bytearray(4 + length + 4)
    expected[:4], expected[-4:] = b"head", b"tail"
    expected[4 + max(4096 - offset, 0):4 + 8192 - offset] = b"a" * (8192 - max(4096, offset))
    expected[4 + (64 << 20) - offset:4 + (64 << 20) + 4096 - offset] = b"b" * 4096
    assert blob == bytes(expected)
    if src.stat().st_blocks * 512 < 1 << 20:  # the file system keeps holes
        assert data_bytes(held.fd, offset + length, offset) == 8192 - max(offset - 4096, 0)
        assert dst.stat().st_blocks * 512 <= 64 << 10
