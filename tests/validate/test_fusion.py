"""The proof's one graph rewrite (graphfix.validate.fusion): a large weight's Transpose before MatMul runs as
FusedMatMul(transB=1), which spares a transposed copy of a tied embedding at every run; anything else runs as
written, and the model graphfix writes is never touched."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphfix.validate.fusion import MIN_BYTES, transposes_fused
from graphfix.validate.runner import ModelRunner

K = 64
VOCAB = MIN_BYTES // (4 * K) + 8  # just over the threshold


def tied_head(vocab: int = VOCAB, extra_output: bool = False, reader: str | None = None,
              as_first: bool = False) -> onnx.ModelProto:
    """x[B, T, K] @ Transpose(W[vocab, K]) -> logits[B, T, vocab], as a dynamo export writes a tied lm_head."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((vocab, K)).astype(np.float32), "W")
    nodes = [helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "T", vocab])]
    if as_first:  # Wt[K, vocab] as the first operand: (Wt @ y)[K, 2]
        nodes.append(helper.make_node("MatMul", ["Wt", "y"], ["logits"], name="head"))
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [K, 2])]
    else:
        nodes.append(helper.make_node("MatMul", ["x", "Wt"], ["logits"], name="head"))
    if reader:
        nodes.append(helper.make_node(reader, ["Wt"], ["other"]))
        outputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, None))
    if extra_output:
        outputs.append(helper.make_tensor_value_info("Wt", TensorProto.FLOAT, [K, vocab]))
    inputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [vocab, 2])] if as_first else \
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", K])]
    graph = helper.make_graph(nodes, "tied", inputs, outputs, [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def plain_run(proto: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_a_large_transposed_weight_runs_fused_with_the_same_outputs():
    model = tied_head()
    before = model.SerializeToString()
    fused, names = transposes_fused(model, {})
    assert [n.op_type for n in fused.graph.node] == ["FusedMatMul"] and names == {"head"}
    assert model.SerializeToString() == before  # the caller's model (the one written) is untouched
    x = np.random.default_rng(1).standard_normal((2, 3, K)).astype(np.float32)
    (got,), (want,) = plain_run(fused, {"x": x}), plain_run(model, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_type_declared_as_the_transpose_makes_it_is_fused():
    """A dynamo export declares every value: the transposed weight as float [K, vocab] (or a named dim)."""
    for dims in ([K, VOCAB], ["k", VOCAB], None):
        model = tied_head()
        model.graph.value_info.append(helper.make_tensor_value_info("Wt", TensorProto.FLOAT, dims))
        assert transposes_fused(model, {})[1] == {"head"}, dims


def test_the_runner_of_a_proof_computes_the_tied_head():
    model = tied_head()
    x = np.random.default_rng(2).standard_normal((1, 5, K)).astype(np.float32)
    result = ModelRunner(model).run({"x": x})
    weight = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_allclose(result.outputs["logits"], x @ weight.T, rtol=1e-4, atol=1e-4)


def test_a_fed_weight_is_fused_too():
    """A light proto's weight is a graph input fed with its array (graphfix.validate.runner.FedWeights)."""
    model = tied_head()
    weight = numpy_helper.to_array(model.graph.initializer[0])
    del model.graph.initializer[:]
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, list(weight.shape)))
    assert [n.op_type for n in transposes_fused(model, {"W": weight})[0].graph.node] == ["FusedMatMul"]
    assert transposes_fused(model, {})[0] is model  # a graph input that is no weight: not fused


def test_a_failure_of_the_fused_node_names_the_op_of_the_file():
    model = tied_head()
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", "K"]))
    runner = ModelRunner(model)
    assert runner.fused == {"head"}  # this runner's session runs it fused
    error = runner.run({"x": np.ones((1, 2, K + 1), np.float32)}).error
    assert "running MatMul node. Name:'head'" in error and "Fused" not in error, error


def _with(change):
    def build():
        model = tied_head()
        change(model)
        return model
    return build


def _perm(model, perm):
    model.graph.node[0].attribute[0].ints[:] = perm


def _dtype(model, dtype):
    weight = model.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight).astype(dtype), "W"))


ELSE = {
    "small": lambda: tied_head(vocab=128), "graph output": lambda: tied_head(extra_output=True),
    "other reader": lambda: tied_head(reader="Relu"), "first operand": lambda: tied_head(as_first=True),
    "subgraph reader": lambda: _read_in_a_branch(),
    "identity perm": _with(lambda m: _perm(m, [0, 1])),
    "float16": _with(lambda m: _dtype(m, np.float16)), "float64": _with(lambda m: _dtype(m, np.float64)),
    # the unfused graph would not load: fusing must not make it
    "custom-domain MatMul": _with(lambda m: m.graph.node[1].__setattr__("domain", "my.ops")),
    "declared type": _with(lambda m: m.graph.value_info.append(
        helper.make_tensor_value_info("Wt", TensorProto.INT64, None))),
    "declared shape": _with(lambda m: m.graph.value_info.append(
        helper.make_tensor_value_info("Wt", TensorProto.FLOAT, [VOCAB, K]))),
    "second producer": _with(lambda m: m.graph.node.append(helper.make_node("Identity", ["x"], ["Wt"]))),
    "name taken twice": _with(lambda m: m.graph.node.append(
        helper.make_node("Identity", ["x"], ["copy"], name=m.graph.node[0].name or "head"))),
    # an initializer that is also a graph input may be overridden by a feed (IR < 4 and after)
    "overridable": _with(lambda m: m.graph.input.append(
        helper.make_tensor_value_info("W", TensorProto.FLOAT, [VOCAB, K]))),
}


@pytest.mark.parametrize("case", list(ELSE))
def test_anything_else_runs_as_written(case):
    model = ELSE[case]()
    assert transposes_fused(model, {}) == (model, frozenset())


def _read_in_a_branch() -> onnx.ModelProto:
    """The transposed weight is also read inside an If branch, from the outer scope."""
    model = tied_head()
    branch = helper.make_graph([helper.make_node("Identity", ["Wt"], ["picked"])], "branch", [],
                               [helper.make_tensor_value_info("picked", TensorProto.FLOAT, None)])
    model.graph.input.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, []))
    model.graph.node.append(helper.make_node("If", ["flag"], ["chosen"], then_branch=branch, else_branch=branch))
    model.graph.output.append(helper.make_tensor_value_info("chosen", TensorProto.FLOAT, None))
    return model
