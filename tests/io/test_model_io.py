"""Safe model I/O: external data stays unread under --static, outputs are atomic and carry their weights."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from conftest import run
from test_bad_inputs import external_model

import graphfix
from graphfix.io.loading import load_model
from graphfix.io.saving import stage_model

OPENED: list[str] = []
_AUDITING = [False]


def _audit(event, args):
    if _AUDITING[0] and event == "open" and isinstance(args[0], str | bytes):
        OPENED.append(str(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def opened_files():
    OPENED.clear()
    _AUDITING[0] = True
    yield OPENED
    _AUDITING[0] = False


def test_static_diagnose_never_opens_external_data(tmp_path, opened_files):
    model = external_model(tmp_path)
    opened_files.clear()  # writing the fixture's files does not count
    findings = graphfix.diagnose(model, static=True)
    assert not [f for f in findings if f.severity.value == "error"]
    assert str(model) in opened_files
    assert not [p for p in opened_files if p.endswith(".data")], opened_files


def test_staged_model_is_invisible_until_commit_and_keeps_weights(tmp_path):
    (tmp_path / "in").mkdir()
    loaded = load_model(external_model(tmp_path / "in"))
    destination = tmp_path / "out" / "fixed.onnx"
    staged = stage_model(loaded.proto, destination, loaded.base_dir)
    assert not destination.exists()
    assert staged.path.exists() and (staged.temp_dir / "fixed.onnx.data").exists()
    staged.commit()
    assert sorted(p.name for p in destination.parent.iterdir()) == ["fixed.onnx", "fixed.onnx.data"]
    reloaded = onnx.load(destination)
    weights = onnx.numpy_helper.to_array(reloaded.graph.initializer[0])
    np.testing.assert_array_equal(weights, np.arange(256, dtype=np.float32))
    x = np.ones((2, 256), np.float32)
    np.testing.assert_array_equal(run(str(destination), {"X": x})[0], x + np.arange(256, dtype=np.float32))


def test_discarded_stage_leaves_nothing(tmp_path):
    loaded = load_model(external_model(tmp_path))
    staged = stage_model(loaded.proto, tmp_path / "out" / "m.onnx", loaded.base_dir)
    staged.discard()
    assert not (tmp_path / "out").exists()  # the folder staging made for it goes too


def test_inline_model_stays_one_file(tmp_path):
    from conftest import parse

    model = parse("""<ir_version: 10, opset_import: ["" : 17]>
g (float[N] X) => (float[N] Y) { Y = Relu(X) }""")
    staged = stage_model(model, tmp_path / "m.onnx")
    staged.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
