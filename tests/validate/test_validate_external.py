"""Models with external data are validated and probed from their path; ORT reads the weights itself."""

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

import graphfix.validate.runner as runner_module
from graphfix.validate import ValidationOptions, probe, validate

HEADER = '<ir_version: 10, opset_import: ["" : 17]>\n'


def save_external(tmp_path, name: str, op: str) -> "onnx.ModelProto":
    m = onnx.parser.parse_model(
        HEADER
        + f"""
    g (float[N, 16] X) => (float[N, 16] Y) {{
        [project] H = MatMul(X, W)
        [combine] Y = {op}(H, X)
    }}"""
    )
    m.graph.initializer.append(numpy_helper.from_array(np.eye(16, dtype=np.float32) * 2, "W"))
    folder = tmp_path / name
    folder.mkdir()
    onnx.save(
        m, folder / "model.onnx", save_as_external_data=True, location="model.onnx.data", size_threshold=0
    )
    return folder / "model.onnx"


@pytest.fixture
def no_weight_loading(monkeypatch):
    """Fail the test if anything loads external tensors into Python."""

    def refuse(*args, **kwargs):
        raise AssertionError("external data was loaded into Python")

    monkeypatch.setattr(onnx, "load_external_data_for_model", refuse)
    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_model", refuse)


def test_validate_paths_with_external_data(tmp_path, no_weight_loading):
    original = save_external(tmp_path, "a", "Add")
    assert validate(original, save_external(tmp_path, "b", "Add"), ValidationOptions()).passed
    changed = validate(original, save_external(tmp_path, "c", "Sub"), ValidationOptions())
    assert not changed.passed
    assert changed.divergence["node"] == "combine"


def test_probe_path_with_external_data(tmp_path, no_weight_loading):
    assert probe(save_external(tmp_path, "a", "Add"), ValidationOptions()) == []


def test_structure_is_loaded_without_weights(tmp_path):
    proto, folder, _files = runner_module.load_structure(save_external(tmp_path, "a", "Add"))
    assert proto.graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL
    assert folder == (tmp_path / "a").resolve()
