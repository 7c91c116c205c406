"""simplify(): onnxsim bounded by time and growth, external weights never sent to it, I/O kept."""

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import graphfix.pipeline.simplify as simplify_module
from graphfix.io.protos import lift_initializers
from graphfix.pipeline.simplify import OnnxsimChild, simplify

HEADER = '<ir_version: 10, opset_import: ["" : 17]>\n'

FOLDABLE = onnx.parser.parse_model(
    HEADER
    + """
g (float[N, 4] X) => (float[N, 4] Y) {
    a = Constant<value = int64[1] {4}>()
    s = Concat<axis = 0>(a, a)
    w = ConstantOfShape<value = float[1] {0.5}>(s)
    W = Reshape(w, s)
    H = MatMul(X, W)
    Y = Relu(H)
}"""
)

# onnxsim folds the ConstantOfShape into a 4 MB constant: a model it would grow
GROWS = onnx.parser.parse_model(
    HEADER
    + """
g (float[N, 1000] X) => (float[N, 1000] Y) {
    s = Constant<value = int64[2] {1000, 1000}>()
    w = ConstantOfShape<value = float[1] {0.5}>(s)
    Y = MatMul(X, w)
}"""
)


def run(model, feeds, base_dir=None):
    options = ort.SessionOptions()
    if base_dir is not None:
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(base_dir)
        )
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, feeds
    )


def test_foldable_model_gets_smaller_and_keeps_its_outputs():
    result = simplify(FOLDABLE)
    assert result.applied, result.message
    assert result.message == ""
    assert len(result.model.graph.node) < len(FOLDABLE.graph.node)
    assert {"Concat", "ConstantOfShape", "Reshape"}.isdisjoint(n.op_type for n in result.model.graph.node)
    assert result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # still dynamic
    x = np.random.default_rng(0).random((3, 4), np.float32)
    np.testing.assert_allclose(run(result.model, {"X": x})[0], run(FOLDABLE, {"X": x})[0], rtol=1e-6)


def test_model_that_would_grow_is_kept():
    result = simplify(GROWS)
    assert not result.applied
    assert result.model is GROWS
    assert "grew the model" in result.message


# 3000 constant folds: onnxsim takes about 2 s on it, 40 times the timeout below (FOLDABLE took under 0.01 s
# once the child was warm, and CI saw it finish)
SLOW = onnx.parser.parse_model(
    HEADER
    + "g (float[N] X) => (float[N] Y) {\n c0 = Constant<value = float[1] {1.0}>()\n"
    + "".join(f" c{i + 1} = Add(c{i}, c{i})\n" for i in range(3000))
    + " Y = Add(X, c3000)\n}"
)


def test_timeout_keeps_the_input():
    result = simplify(SLOW, timeout_s=0.05)
    assert not result.applied
    assert result.model is SLOW
    assert "did not finish within" in result.message


def test_child_failure_keeps_the_input_and_says_why():
    broken = onnx.parser.parse_model(HEADER + "g (float[N] X) => (float[N] Y) { Y = Relu(Missing) }")
    result = simplify(broken)
    assert not result.applied and result.model is broken
    assert result.message.startswith("simplification failed, kept the unsimplified graph: ")
    assert "Missing" in result.message and "\n" not in result.message


def external_model(tmp_path):
    m = onnx.parser.parse_model(
        HEADER
        + """
    g (float[N, 64] X) => (float[N, 64] Y) {
        WT = Transpose(W)
        s = Constant<value = int64[2] {64, 64}>()
        W2 = Reshape(WT, s)
        Y = MatMul(X, W2)
    }"""
    )
    weight = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096
    m.graph.initializer.append(numpy_helper.from_array(weight, "W"))
    inline = onnx.ModelProto()
    inline.CopyFrom(m)
    onnx.save(m, tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    return onnx.load(tmp_path / "m.onnx", load_external_data=False), inline


def test_external_data_model_is_simplified_without_reading_the_weights(tmp_path):
    structure, inline = external_model(tmp_path)
    result = simplify(structure, base_dir=tmp_path)
    assert result.applied, result.message
    assert "Reshape" not in [n.op_type for n in result.model.graph.node]
    weight = next(t for t in result.model.graph.initializer if t.name == "W")
    assert weight.data_location == onnx.TensorProto.EXTERNAL  # same reference as before
    assert {e.key: e.value for e in weight.external_data}["location"] == "m.onnx.data"
    assert [i.name for i in result.model.graph.input] == ["X"]
    x = np.ones((2, 64), np.float32)
    np.testing.assert_allclose(run(result.model, {"X": x}, tmp_path)[0], run(inline, {"X": x})[0], rtol=1e-6)


def test_huge_inline_weights_are_lifted_like_external_ones(monkeypatch):
    m = onnx.parser.parse_model(HEADER + "g (float[N, 64] X) => (float[N, 64] Y) { Y = MatMul(X, W) }")
    m.graph.initializer.append(numpy_helper.from_array(np.ones((64, 64), np.float32), "W"))
    monkeypatch.setattr(simplify_module, "PROTOBUF_SAFE_BYTES", 1000)
    monkeypatch.setattr(simplify_module, "LIFT_MIN_BYTES", 1000)
    assert simplify_module._liftable_initializers(m) == {"W"}
    light = lift_initializers(m, {"W"})
    assert not light.graph.initializer and [i.name for i in light.graph.input] == ["X", "W"]


def test_onnxsim_child_is_never_forked(monkeypatch):
    """repair runs onnxruntime sessions and a writer thread while onnxsim works: a forked child would inherit
    onnxruntime's locks without its threads and hang in onnxsim's own sessions (seen: a 120 s timeout)."""
    import os

    def no_fork(*_args, **_kwargs):
        raise AssertionError("simplify forked the process")

    monkeypatch.setattr(os, "fork", no_fork)
    outcome = simplify(FOLDABLE)
    assert outcome.applied, outcome.message


def test_one_child_serves_every_job_and_exits_when_its_input_closes():
    """repair takes the process's onnxsim child before loading the model (its imports overlap the load); the
    same child serves every later job, and a child whose input closes (its parent gone) exits quietly."""
    child = OnnxsimChild.shared()
    first, second = simplify(FOLDABLE), simplify(GROWS)
    assert first.applied and "ConstantOfShape" not in [n.op_type for n in first.model.graph.node]
    assert not second.applied and "grew the model" in second.message
    assert OnnxsimChild.shared() is child and child.process.poll() is None
    unused = OnnxsimChild()
    unused.process.stdin.close()
    assert unused.process.wait(timeout=120) == 0
    unused.close()  # closing again is harmless


def test_a_child_past_its_time_is_replaced_for_the_next_job():
    assert "did not finish within" in simplify(SLOW, timeout_s=0.05).message
    assert simplify(FOLDABLE).applied


def test_a_job_cut_short_by_the_caller_stops_the_child():
    """`--timeout`'s SIGALRM, Ctrl-C or a stop raise inside the job's wait: onnxsim's process went on folding for
    minutes after graphfix had ended (helper 63), and its late reply would have answered the next job."""
    import signal

    child = OnnxsimChild()

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            simplify(SLOW, timeout_s=600, child=child)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert child.process.poll() is not None  # stopped and reaped, not left to finish the job
    assert simplify(FOLDABLE).applied  # the process's own child is untouched


def test_the_exporters_record_in_the_graphs_metadata_is_kept():
    """onnxsim drops the graph's metadata, where the dynamo exporter records the sizes torch.export traced for
    (GF016 reads it: a dim it fixed is an error; helper 154 simplified such an export and it was written)."""
    from graphfix.io.torch_ranges import RANGES, exported_ranges

    recorded = onnx.ModelProto()
    recorded.CopyFrom(FOLDABLE)
    recorded.graph.metadata_props.add(key=RANGES, value="{s1: VR[4, 4]}")
    result = simplify(recorded)
    assert result.applied, result.message
    assert exported_ranges(result.model) == {"N": (4, 4)}
