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
        nodes.append(helper.make_node("MatMul", ["Wt", "y"], ["logits"]))
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [K, 2])]
    else:
        nodes.append(helper.make_node("MatMul", ["x", "Wt"], ["logits"]))
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
    fused = transposes_fused(model, {})
    assert [n.op_type for n in fused.graph.node] == ["FusedMatMul"]
    assert model.SerializeToString() == before  # the caller's model (the one written) is untouched
    x = np.random.default_rng(1).standard_normal((2, 3, K)).astype(np.float32)
    (got,), (want,) = plain_run(fused, {"x": x}), plain_run(model, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


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
    assert [n.op_type for n in transposes_fused(model, {"W": weight}).graph.node] == ["FusedMatMul"]
    assert transposes_fused(model, {}) is model  # a graph input that is no weight: not fused


@pytest.mark.parametrize("case", ["small", "graph output", "other reader", "first operand", "subgraph reader"])
def test_anything_else_runs_as_written(case):
    model = {"small": lambda: tied_head(vocab=128), "graph output": lambda: tied_head(extra_output=True),
             "other reader": lambda: tied_head(reader="Relu"), "first operand": lambda: tied_head(as_first=True),
             "subgraph reader": _read_in_a_branch}[case]()
    assert transposes_fused(model, {}) is model


def _read_in_a_branch() -> onnx.ModelProto:
    """The transposed weight is also read inside an If branch, from the outer scope."""
    model = tied_head()
    branch = helper.make_graph([helper.make_node("Identity", ["Wt"], ["picked"])], "branch", [],
                               [helper.make_tensor_value_info("picked", TensorProto.FLOAT, None)])
    model.graph.input.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, []))
    model.graph.node.append(helper.make_node("If", ["flag"], ["chosen"], then_branch=branch, else_branch=branch))
    model.graph.output.append(helper.make_tensor_value_info("chosen", TensorProto.FLOAT, None))
    return model
