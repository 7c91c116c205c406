"""#20 item 4: a file is checked once and then read only through the descriptor that was checked.

A swap of a path after its check is made deterministic by doing it between two calls of the public API: the model
is loaded (checked), then its files are replaced, then it is repaired. Nothing of graphfix is patched: what the
repair reads is what the kernel reports (inotify on outside/) and what it writes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_reads_sparse import external_model

from graphfix.core.errors import InputError
from graphfix.core.registry import load_rules
from graphfix.io.external_data import read_external
from graphfix.io.loading import load_model
from graphfix.pipeline.repair import RepairOptions, repair_model

WEIGHTS = np.arange(256, dtype=np.float32).tobytes()


def _swap_for_link(path: Path, target: Path) -> None:
    """Replace `path` by a symbolic link to `target`, in one rename."""
    link = path.with_name(path.name + ".link")
    os.symlink(target, link)
    os.replace(link, path)


def _repair(loaded, out: Path):
    return repair_model(loaded, out, RepairOptions(rules=load_rules()[0], simplify=False))


@pytest.fixture
def model(sandbox) -> Path:
    path = external_model(sandbox.model_dir)
    (sandbox.outside / "model.onnx.data").write_bytes(b"\x7f" * len(WEIGHTS))  # what a swap would expose
    sandbox.touched()
    return path


def test_a_data_file_swapped_for_a_link_after_its_first_read_is_not_followed(sandbox, model):
    """The data file is opened once, at its first read; a link put in its place afterwards is never opened: the
    unchanged repair copies the bytes of the file that was checked."""
    loaded = load_model(model)
    np.testing.assert_array_equal(read_external(loaded.proto.graph.initializer[0], loaded.base_dir),
                                  np.arange(256, dtype=np.float32))
    _swap_for_link(sandbox.model_dir / "model.onnx.data", sandbox.outside / "model.onnx.data")
    out = sandbox.root / "out" / "o.onnx"
    result = _repair(loaded, out)
    assert result.error is None and result.output == str(out), result.error
    assert (out.parent / "o.onnx.data").read_bytes() == WEIGHTS
    assert sandbox.touched() == []


def test_a_data_file_swapped_for_a_link_before_its_first_read_is_refused(sandbox, model):
    """Swapped between the load's check and the first read: the first open checks again, and refuses."""
    loaded = load_model(model)
    _swap_for_link(sandbox.model_dir / "model.onnx.data", sandbox.outside / "model.onnx.data")
    out = sandbox.root / "out" / "o.onnx"
    with pytest.raises(InputError, match="points outside the model's folder through a symbolic link"):
        result = _repair(loaded, out)
        assert result.error is None, result.error  # a failed validation would hide the read
    assert not out.exists()
    assert sandbox.touched() == []


def test_a_data_file_swapped_for_a_link_between_its_check_and_its_open_is_refused(sandbox, model, monkeypatch):
    """Helper 55 raced a swapping process against 40 repairs: 9 copied the outside file into their output. The
    swap is put here exactly where the race won, right after the first read's check of the path and before the
    open (the check itself runs as it is; only its caller sees the swap happen after it): the file the descriptor
    holds is checked too, and refused."""
    import graphfix.io.external_data as external_data

    checked = external_data.unsafe_location_reason

    def check_then_swap(location, base_dir):
        reason = checked(location, base_dir)
        _swap_for_link(sandbox.model_dir / "model.onnx.data", sandbox.outside / "model.onnx.data")
        return reason

    loaded = load_model(model)
    monkeypatch.setattr(external_data, "unsafe_location_reason", check_then_swap)
    with pytest.raises(InputError, match="a link made while it was read"):
        read_external(loaded.proto.graph.initializer[0], loaded.base_dir)
    assert sandbox.touched() == []


def test_a_model_file_replaced_after_loading_is_not_read_again(sandbox, model):
    """The unchanged model is copied from the descriptor it was parsed from, not from its path."""
    original = model.read_bytes()
    loaded = load_model(model)
    replacement = sandbox.model_dir / "other.onnx"
    replacement.write_bytes(original.replace(b"model.onnx.data", b"model.onnx.dat2"))
    os.replace(replacement, model)
    out = sandbox.root / "out" / "o.onnx"
    result = _repair(loaded, out)
    assert result.error is None, result.error
    written = onnx.ModelProto.FromString(out.read_bytes())  # its data location renamed after the output, no more
    location = next(e for e in written.graph.initializer[0].external_data if e.key == "location")
    assert location.value == "o.onnx.data"
    location.value = "model.onnx.data"
    assert written == onnx.ModelProto.FromString(original)


@pytest.mark.parametrize("command", [["diagnose"], ["diagnose", "--static"], ["check"], ["repair", "--dry-run"]])
@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_model_that_is_no_regular_file_is_refused_without_blocking(sandbox, command, kind):
    """A FIFO (no writer: opening it to read would block), a device or a folder given as the model."""
    path = sandbox.model_dir / "model.onnx"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        os.symlink("/dev/zero", path)
    else:
        path.mkdir()
        (path / "x.onnx.keep").write_text("")
    done = sandbox.run(*command, str(path), timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    expected = {"fifo": "is a FIFO, not a regular file", "device": "is a character device, not a regular file",
                "folder": "is a folder"}[kind]
    assert expected in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_data_file_that_is_no_regular_file_is_refused_without_blocking(sandbox, kind):
    model = external_model(sandbox.model_dir)
    data = sandbox.model_dir / "model.onnx.data"
    data.unlink()
    os.mkfifo(data) if kind == "fifo" else data.mkdir()
    for command in (["diagnose"], ["check"], ["repair", "-o", str(sandbox.root / "out" / "o.onnx")]):
        done = sandbox.run(*command, str(model), timeout=60)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "not a regular file" in done.stdout + done.stderr
        assert "Traceback" not in done.stderr


def constant_of_shape_model(folder: Path) -> Path:
    """y = x + ConstantOfShape(Shape(x)) whose `value` attribute (2.0) is in external data: a tensor that is no
    initializer, which onnxruntime would read from its file itself."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    value = numpy_helper.from_array(np.array([2.0], np.float32), "value")
    (folder / "v.bin").write_bytes(value.raw_data)
    onnx.external_data_helper.set_external_data(value, location="v.bin", offset=0, length=4)
    value.ClearField("raw_data")
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("ConstantOfShape", ["s"], ["c"], name="fill", value=value),
             helper.make_node("Add", ["x", "c"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


@pytest.mark.parametrize("build", [external_model, constant_of_shape_model])
def test_sessions_made_after_a_swap_read_the_held_file(sandbox, build):
    """The first session opens the data file; it is then swapped for a link to outside/. Sessions made later (the
    probe makes one per cut) get the weights from the held descriptor: same values, nothing outside opened. The
    ConstantOfShape's value is no initializer, which onnxruntime would otherwise read from its file itself."""
    from graphfix.validate.runner import ModelRunner

    loaded = load_model(build(sandbox.model_dir))
    x = {"X": np.ones((2, 256), np.float32)} if build is external_model else {"x": np.ones((2, 4), np.float32)}
    first = ModelRunner(loaded.proto, loaded.base_dir).run(x)
    assert first.ok, first.error
    data = next(p for p in sandbox.model_dir.iterdir() if p.suffix in (".data", ".bin"))
    (sandbox.outside / data.name).write_bytes(b"\x7f" * data.stat().st_size)
    sandbox.touched()
    _swap_for_link(data, sandbox.outside / data.name)
    later = ModelRunner(loaded.proto, loaded.base_dir).run(x)
    assert later.ok, later.error
    name = next(iter(first.outputs))
    np.testing.assert_array_equal(later.outputs[name], first.outputs[name])
    assert sandbox.touched() == []
