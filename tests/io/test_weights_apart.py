"""Weights kept apart (graphfix.io.weights): repairs never copy large weights, and the files they write are exact."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import run
from onnx import TensorProto, helper, numpy_helper

import graphfix
from graphfix.io import saving
from graphfix.io.graphs import export_graph, import_graph
from graphfix.io.saving import stage_model
from graphfix.io.weights import DETACH_MIN_BYTES, detach_inline, has_stubs, materialize, stub_names
from graphfix.validate.bisect import first_divergence
from graphfix.validate.runner import FedWeights, ModelRunner

BIG = 128  # a 128x128 float32 weight is 64 KiB: just large enough to be detached


def big_weight_model(dead_branch: bool = True) -> onnx.ModelProto:
    """x[B,128] @ W1 -> @ Transpose(W2) -> y; W2 reaches the graph only through a Transpose onnxsim can fold.
    A dead Neg branch gives GF001 something to repair."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((BIG, BIG)).astype(np.float32)
    w2 = rng.standard_normal((BIG, BIG)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="/mm1"),
        helper.make_node("Transpose", ["W2"], ["W2t"], name="/w2_t", perm=[1, 0]),
        helper.make_node("MatMul", ["h", "W2t"], ["y"], name="/mm2"),
    ]
    if dead_branch:
        nodes.append(helper.make_node("Neg", ["h"], ["unused"], name="/dead/Neg"))
    graph = helper.make_graph(
        nodes, "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", BIG])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", BIG])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def initializer_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_export_detaches_large_weights_but_keeps_those_a_fold_reads():
    model = big_weight_model()
    weights: dict = {}
    light = export_graph(import_graph(model), like=model, weights=weights)
    assert stub_names(light) == {"W1"}  # W2 feeds a Transpose of constants: onnxsim folds it, so it stays
    assert weights["W1"] is not None and numpy_helper.to_array(weights["W1"]).nbytes >= DETACH_MIN_BYTES
    assert light.ByteSize() < model.ByteSize() - DETACH_MIN_BYTES + 1024  # W1's bytes are not in it
    full = materialize(light, weights)
    assert not has_stubs(full)
    x = np.ones((2, BIG), np.float32)
    np.testing.assert_array_equal(run(full, {"x": x})[0], run(model, {"x": x})[0])


def test_repair_writes_every_weight_and_matches_the_original(tmp_path, save):
    source = save(big_weight_model())
    out = tmp_path / "fixed.onnx"
    result = graphfix.repair(source, output=out)
    assert result.status == "repaired" and result.output == str(out)
    assert has_stubs(result.light)  # the pipeline itself never held a second copy of W1
    written = onnx.load(out)
    onnx.checker.check_model(written)
    assert "Neg" not in [n.op_type for n in written.graph.node]
    assert "Transpose" not in [n.op_type for n in written.graph.node]  # onnxsim folded through the kept weight
    expected = initializer_values(result.model)
    actual = initializer_values(written)
    assert expected.keys() == actual.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name], value)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, BIG)).astype(np.float32)
        np.testing.assert_allclose(run(str(out), {"x": x})[0], run(str(source), {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_unchanged_model_is_written_byte_for_byte(tmp_path, save):
    source = save(big_weight_model(dead_branch=False))
    out = tmp_path / "same.onnx"
    result = graphfix.repair(source, output=out)
    assert result.status == "unchanged"
    assert out.read_bytes() == source.read_bytes()


def test_light_model_staged_with_external_data(tmp_path, monkeypatch):
    model = big_weight_model()
    weights: dict = {}
    light = export_graph(import_graph(model), like=model, weights=weights)
    monkeypatch.setattr(saving, "PROTOBUF_LIMIT", (64 << 20) + 1024)  # anything but tiny models goes external
    staged = stage_model(light, tmp_path / "out.onnx", weights=weights)
    path = staged.commit()
    assert (tmp_path / "out.onnx.data").stat().st_size >= BIG * BIG * 4
    loaded = onnx.load(path)  # reads the external data back
    np.testing.assert_array_equal(initializer_values(loaded)["W1"], numpy_helper.to_array(model.graph.initializer[0]))


def test_a_renamed_weight_is_written_under_its_new_name(tmp_path):
    model = big_weight_model(dead_branch=False)
    graph = import_graph(model)
    graph.tensors()["W1"].name = "W1_renamed"
    weights: dict = {}
    light = export_graph(graph, like=model, weights=weights)
    path = stage_model(light, tmp_path / "renamed.onnx", weights=weights).commit()
    written = initializer_values(onnx.load(path))
    assert "W1_renamed" in written and "W1" not in written
    assert model.graph.initializer[0].name == "W1"  # the input model is left as it was


def test_runner_reads_a_light_candidates_weights_from_its_file(tmp_path):
    model = big_weight_model()
    weights: dict = {}
    light = export_graph(import_graph(model), like=model, weights=weights)
    path = stage_model(light, tmp_path / "c.onnx", weights=weights).commit()
    runner = ModelRunner.from_source((light, path))
    assert runner.session is not None
    full = runner.full_proto()  # what bisection exposes tensors of: it must carry the weights
    assert not has_stubs(full)
    np.testing.assert_array_equal(initializer_values(full)["W1"], numpy_helper.to_array(model.graph.initializer[0]))


def test_light_model_with_a_missing_weight_is_refused(tmp_path):
    model = big_weight_model()
    weights: dict = {}
    light = export_graph(import_graph(model), like=model, weights=weights)
    with pytest.raises(ValueError, match="not in the weights map"):
        stage_model(light, tmp_path / "x.onnx", weights={})
    assert list(tmp_path.iterdir()) == []  # the staging folder went with the failure


def test_onnxsim_child_import_hides_torch_and_sympy():
    code = ("import sys; from graphfix.pipeline.simplify import _import_onnxsim; m = _import_onnxsim(); "
            "assert 'torch' not in sys.modules, 'torch imported'; assert 'sympy' not in sys.modules, 'sympy imported';"
            " assert hasattr(m, 'simplify'); import sympy; print('ok')")  # and sympy imports afterwards
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_fed_runner_matches_the_full_model_and_hides_its_weight_inputs():
    model = big_weight_model(dead_branch=False)
    light, weights = detach_inline(model)
    assert set(weights) == {"W1", "W2"} and has_stubs(light)
    fed = FedWeights()
    runner = ModelRunner(light, weights=weights, fed=fed)
    assert runner.input_names == ["x"]
    x = np.random.default_rng(1).standard_normal((3, BIG)).astype(np.float32)
    np.testing.assert_allclose(runner.run({"x": x}).outputs["y"], run(model, {"x": x})[0], rtol=1e-6)
    twin = ModelRunner(light, weights=weights, fed=fed)
    assert twin.weight_feeds["W1"] is runner.weight_feeds["W1"]  # one array, shared by both sessions


def test_divergence_is_located_between_light_models():
    model = big_weight_model(dead_branch=False)
    light, weights = detach_inline(model)
    changed = dict(weights)
    changed["W2"] = numpy_helper.from_array(numpy_helper.to_array(weights["W2"]) * 2, "W2")
    fed = FedWeights()
    original = ModelRunner(light, weights=weights, fed=fed)
    candidate = ModelRunner(light, weights=changed, fed=fed)
    x = np.ones((2, BIG), np.float32)
    found = first_divergence(original, candidate, {"x": x}, rtol=1e-4, atol=1e-5)
    assert found["node"] == "/w2_t" and found["tensor"] == "W2t"  # W1's product agrees; W2's Transpose does not


def test_weights_written_ahead_are_dropped_when_the_final_graph_no_longer_uses_them(tmp_path):
    from concurrent.futures import Future

    from graphfix.io.loading import from_proto
    from graphfix.io.saving import finish_stage, stage_weights
    from graphfix.pipeline.repair import _stage

    model = big_weight_model(dead_branch=False)
    light, weights = detach_inline(model)
    destination = tmp_path / "out.onnx"
    ahead: Future = Future()
    ahead.set_result(stage_weights(destination, light, weights))
    final = onnx.ModelProto()
    final.CopyFrom(light)
    keep = [t for t in final.graph.initializer if t.name != "W2"]  # as if onnxsim had folded W2 away
    del final.graph.initializer[:]
    final.graph.initializer.extend(keep)
    with pytest.raises(ValueError, match="written ahead"):
        finish_stage(ahead.result(), final, weights)
    staged = _stage(final, destination, from_proto(model), True, weights, ahead, durable=True)
    written = onnx.load(staged.path, load_external_data=False)
    assert {t.name for t in written.graph.initializer} == {"W1"}  # W2 is not left behind in the file
    staged.discard()
