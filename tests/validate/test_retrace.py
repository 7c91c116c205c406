"""Where the original fails: the original run sample by sample, along a dim the original is shown to compute
samples independently on (copies and a permutation of samples, at the export size), is the `consistent` reference;
the original re-traced at the probe size is the `derived` check, which fails a rewrite that does not implement its
analysis but raises no level."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphfix
from graphfix.validate import ValidationOptions, validate
from graphfix.validate.consistency import Samples, independent_samples
from graphfix.validate.retrace import Retracer
from graphfix.validate.runner import ModelRunner


def baked_heads(time: int = 7) -> onnx.ModelProto:
    """x[T, B, 16] -> Reshape(Concat([time], B*4, [4])): MultiheadAttention's view(tgt_len, bsz * heads, head_dim)
    traced at T=time, then each row scaled by its position along T so that a wrong T shows in the values."""
    const = {"len": [time], "four": [4], "one": [1], "zero": [0]}
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "one_s"], ["b"], name="batch", axis=0),
        helper.make_node("Unsqueeze", ["b", "zero"], ["b1"], name="unsqueeze"),
        helper.make_node("Mul", ["b1", "four"], ["bh"], name="heads"),
        helper.make_node("Concat", ["len", "bh", "four"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"], name="reshape"),
        helper.make_node("CumSum", ["r", "zero_s"], ["y"], name="cumsum"),
    ]
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in const.items()]
    inits += [numpy_helper.from_array(np.array(1, np.int64), "one_s"),
              numpy_helper.from_array(np.array(0, np.int64), "zero_s")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", "B4", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_original_re_traced_runs_where_the_original_fails_and_is_the_reference():
    original = baked_heads()
    retracer = Retracer(ModelRunner(original))
    assert [(b.value, str(b.expr)) for b in retracer.baked] == [(7, "T")]
    feeds = {"x": np.random.default_rng(0).standard_normal((10, 3, 16)).astype(np.float32)}
    assert not ModelRunner(original).run(feeds).ok  # baked at T=7
    retraced = retracer.at({"T": 10, "B": 3}).run(feeds)
    assert retraced.ok and retraced.outputs["y"].shape == (10, 12, 4)
    assert retracer.at({"B": 3}) is None  # a size the binding does not give: no re-trace

    repaired = graphfix.repair(original, simplify=False)
    assert repaired.status == "repaired", repaired.error
    # B away from 2 runs in the original (T at 7); T away from 7 has only the re-trace, which is no evidence
    assert repaired.validation["dims"] == {"T": "runs", "B": "original"}
    assert repaired.validation["derived"]["matched"] >= 2 and repaired.validation["derived"]["differed"] == 0
    first = repaired.validation["runs"][0]
    assert first["sizes"] == {"T": 7, "B": 2} and first["level"] == "original"  # the solved export size, in full
    strict = graphfix.repair(original, simplify=False, validation=ValidationOptions(require="consistent"))
    assert strict.status == "failed" and "below the required 'consistent'" in strict.error


def scaled_away_from_seven(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its output multiplied by T/7: equal to it at T=7, different elsewhere."""
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    graph = changed.graph
    out = graph.output[0].name
    last = next(n for n in graph.node if out in n.output)
    last.output[0] = "unscaled"
    graph.node.extend([
        helper.make_node("Shape", ["x"], ["xs"], name="xs", end=1),
        helper.make_node("Cast", ["xs"], ["xf"], name="xf", to=TensorProto.FLOAT),
        helper.make_node("Div", ["xf", "seven"], ["factor"], name="factor"),
        helper.make_node("Mul", ["unscaled", "factor"], [out], name="scale")])
    graph.initializer.append(numpy_helper.from_array(np.array([7.0], np.float32), "seven"))
    return changed


def test_a_rewrite_that_does_not_implement_its_analysis_fails_the_derived_check():
    original = baked_heads()
    repaired = graphfix.repair(original, simplify=False)
    wrong = scaled_away_from_seven(repaired.model)
    validation = validate(original, wrong, ValidationOptions(trace_sizes={"T": 7, "B": 2}))
    assert not validation.passed
    assert any("derived check" in reason for reason in validation.reasons)
    assert any(run.derived is False for run in validation.runs)
    assert validate(original, repaired.model, ValidationOptions(trace_sizes={"T": 7, "B": 2})).passed


def test_a_repair_that_reads_the_wrong_dim_is_rejected_by_the_re_trace():
    """Concat([T], B*4, [4]) rewritten with B where T belongs: it runs wherever T*B*16 = B*B*16 fails to matter
    only at T == B, so a probe with distinct sizes must reject it."""
    original = baked_heads()
    wrong = onnx.ModelProto()
    wrong.CopyFrom(original)
    concat = next(n for n in wrong.graph.node if n.op_type == "Concat")
    concat.input[0] = "b1"
    validation = validate(original, wrong, ValidationOptions(trace_sizes={"T": 7, "B": 2}))
    assert not validation.passed


def sequence_first_mean() -> onnx.ModelProto:
    """y = x - mean over time, for x[T, B, 4]: samples along B are independent, tokens along T are not."""
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["m"], name="mean", keepdims=1),
             helper.make_node("Sub", ["x", "m"], ["y"], name="centre")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", "B", 4])],
                              [numpy_helper.from_array(np.array([0], np.int64), "axes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_leading_time_dim_is_not_taken_for_a_batch_and_the_batch_axis_is_found():
    runner = ModelRunner(sequence_first_mean())
    feeds = {"x": np.random.default_rng(1).standard_normal((5, 3, 4)).astype(np.float32)}
    time = independent_samples(runner, feeds, "T", 1e-5, 1e-6)
    assert isinstance(time, str) and "not independent" in time
    batch = independent_samples(runner, feeds, "B", 1e-5, 1e-6)
    assert isinstance(batch, Samples) and batch.inputs == {"x": 1} and batch.outputs == {"y": 1}


def test_samples_weighted_by_position_are_found_dependent_by_the_permutation():
    """y = x * w[b] with w = [1, 2, 3, 1] (batch baked at 4): copies of the first or the last sample give their
    outputs, but the samples reversed do not give the outputs reversed."""
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"], name="weigh")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3])],
                              [numpy_helper.from_array(np.array([[1], [2], [3], [1]], np.float32), "w")])
    runner = ModelRunner(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    feeds = {"x": np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)}
    found = independent_samples(runner, feeds, "B", 1e-5, 1e-6)
    assert isinstance(found, str) and "permute" in found


def test_independence_is_not_assumed_where_the_original_fails():
    feeds = {"x": np.random.default_rng(4).standard_normal((9, 3, 16)).astype(np.float32)}  # baked at T=7
    found = independent_samples(ModelRunner(baked_heads()), feeds, "B", 1e-5, 1e-6)
    assert isinstance(found, str) and "not assumed" in found


def test_a_batch_folded_into_rows_is_found_in_its_blocks():
    """Reshape x[N, T, 4] -> [N*T, 4]: each sample owns a block of T rows."""
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="fold")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["NT", 4])],
                              [numpy_helper.from_array(np.array([-1, 4], np.int64), "s")])
    runner = ModelRunner(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    feeds = {"x": np.random.default_rng(2).standard_normal((3, 5, 4)).astype(np.float32)}
    samples = independent_samples(runner, feeds, "N", 1e-5, 1e-6)
    assert isinstance(samples, Samples) and samples.outputs == {"y": 0}
