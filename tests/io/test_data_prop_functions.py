"""Data propagation's budget through model-local functions: a function is walked at each call with what its
caller passes and gives back what its body makes, so a vector one function widens and hands to another, or
returns to its caller, is bounded (graphfix.io.propagation)."""

from __future__ import annotations

import onnx
import pytest
from conftest import bounded_graphfix
from fixtures.shape_chains import chained, doubled
from onnx import TensorProto, helper

from graphfix.io.propagation import data_prop_allowed

CAP = 2 << 30  # address space


def test_a_function_s_input_is_as_wide_as_anything_the_graph_makes():
    """The graph widens a rank-1 input to 300 dims (OneHots), then a function concatenates the shape of what it is
    given with itself 13 times: a function's input was taken for as wide as the widest tensor the model declares
    (1 here), and the 2.5 million values went through."""
    onehots = [helper.make_node("Constant", [], ["depth"], value_ints=[1]),
               helper.make_node("Constant", [], ["values"], value_ints=[0, 1])]
    previous = "x"
    for i in range(299):
        onehots.append(helper.make_node("OneHot", [previous, "depth", "values"], [f"h{i}"]))
        previous = f"h{i}"
    body = chained([helper.make_node("Shape", ["t"], ["c"]),
                     *(helper.make_node("Concat", ["c", "c"], [f"c{k}"], axis=0) for k in range(13))])
    function = helper.make_function("local", "F", ["t"], ["out"], body, [helper.make_opsetid("", 17)])
    model = doubled([*onehots, helper.make_node("F", [previous], ["f"], domain="local")], "f", 0,
                     [helper.make_tensor_value_info("x", TensorProto.INT64, [1])], functions=[function])
    assert not data_prop_allowed(model, sized=False)


def _onehots(start: str, count: int) -> tuple[list, str]:
    """`count` OneHots of depth 1, each adding a dim to `start`: a rank-1 input comes out with count + 1 dims."""
    nodes = [helper.make_node("Constant", [], ["depth"], value_ints=[1]),
             helper.make_node("Constant", [], ["values"], value_ints=[0, 1])]
    previous = start
    for i in range(count):
        nodes.append(helper.make_node("OneHot", [previous, "depth", "values"], [f"h{i}"]))
        previous = f"h{i}"
    return nodes, previous


def _doubling(value: str, times: int, last: str) -> list:
    """`value` concatenated with itself `times` times, the last named `last`."""
    nodes = []
    for k in range(times):
        nodes.append(helper.make_node("Concat", [value, value], [f"{value}{k}"], axis=0))
        value = f"{value}{k}"
    return [*nodes, helper.make_node("Identity", [value], [last])]


def _function(name: str, inputs: list, outputs: list, body: list, attributes=()) -> onnx.FunctionProto:
    return helper.make_function("local", name, inputs, outputs, body, [helper.make_opsetid("", 17),
                                                                         helper.make_opsetid("local", 1)],
                                attributes=list(attributes))


def _calling(nodes: list, functions: list, output: str = "y") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info(output, TensorProto.INT64, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                             functions=functions, ir_version=9)


def _widened_in_a_function(doublings: int = 13) -> onnx.ModelProto:
    """The graph hands its rank-1 input to F, which widens it to 300 dims (OneHots) and hands that to G, which
    concatenates its shape with itself `doublings` times (2.4 million values at 13, from 10 KB)."""
    widened, wide = _onehots("t", 299)
    f = _function("F", ["t"], ["out"], [*widened, helper.make_node("G", [wide], ["out"], domain="local")])
    g = _function("G", ["u"], ["out"], [helper.make_node("Shape", ["u"], ["s"]), *_doubling("s", doublings, "out")])
    return _calling([helper.make_node("F", ["x"], ["y"], domain="local")], [f, g])


def _returned_by_a_function(use: str) -> onnx.ModelProto:
    """F returns the shape of a 300-dim tensor concatenated with itself 10 times (307,200 values, within the
    budget); the caller concatenates it four times, or makes a tensor of that many dims (`ConstantOfShape`,
    `Expand`) whose shape it concatenates four times: 1.2 million values."""
    widened, wide = _onehots("t", 299)
    f = _function("F", ["t"], ["out"], [*widened, helper.make_node("Shape", [wide], ["s"]),
                                        *_doubling("s", 10, "out")])
    nodes = [helper.make_node("F", ["x"], ["v"], domain="local")]
    if use != "Concat":
        nodes += [helper.make_node("Constant", [], ["one"], value_ints=[1]),
                  helper.make_node(use, ["v"] if use == "ConstantOfShape" else ["one", "v"], ["made"]),
                  helper.make_node("Shape", ["made"], ["v2"])]
    shape = "v" if use == "Concat" else "v2"
    nodes.append(helper.make_node("Concat", [shape] * 4, ["y"], axis=0))
    return _calling(nodes, [f])


@pytest.mark.parametrize("sized", [True, False])
def test_a_vector_a_function_widens_and_hands_to_another_function_is_bounded(sized):
    """Helper 66: a function's inputs were as wide as anything the main graph made, but F widened the tensor it
    handed G itself: G's 2.4 million values went through (gigabytes in onnx's inference and onnxruntime's load)."""
    assert not data_prop_allowed(_widened_in_a_function(13), sized=sized)
    assert data_prop_allowed(_widened_in_a_function(1), sized=sized)  # 600 values: a shape computation


@pytest.mark.parametrize("use", ["Concat", "ConstantOfShape", "Expand"])
def test_the_length_of_what_a_function_returns_is_bounded_in_its_caller(use):
    """Helper 65, finding 7: the caller knew no length of a function's outputs, so a vector F returned (within
    the budget inside F) went through the caller's Concat, or sized the rank of its ConstantOfShape or Expand."""
    assert not data_prop_allowed(_returned_by_a_function(use), sized=False)


def test_a_function_sized_by_its_caller_s_attribute_is_bounded():
    """A body's `Constant<value_ints: ints = @shape>` takes the caller's value: ConstantOfShape of 10**8 ones."""
    body = [helper.make_node("Constant", [], ["n"]), helper.make_node("ConstantOfShape", ["n"], ["out"])]
    body[0].attribute.append(onnx.AttributeProto(name="value_ints", ref_attr_name="shape",
                                                  type=onnx.AttributeProto.INTS))
    f = _function("F", [], ["out"], body, attributes=["shape"])
    model = _calling([helper.make_node("F", [], ["c"], domain="local", shape=[10**8]),
                      helper.make_node("Cast", ["c"], ["y"], to=TensorProto.INT64)], [f])
    assert not data_prop_allowed(model)
    model.graph.node[0].attribute[0].ints[:] = [8]
    assert data_prop_allowed(model)


def test_a_call_cycle_or_a_chain_of_calls_too_deep_to_walk_ends():
    """A function calling itself (which onnx's checker refuses) or a chain of 5,000 calls is taken for unbounded,
    never walked forever nor past Python's recursion limit."""
    looping = _function("F", ["t"], ["out"], [helper.make_node("F", ["t"], ["out"], domain="local")])
    assert not data_prop_allowed(_calling([helper.make_node("F", ["x"], ["y"], domain="local")], [looping]))
    chain = [_function(f"F{k}", ["t"], ["out"], [helper.make_node(f"F{k + 1}", ["t"], ["out"], domain="local")])
             for k in range(4999)]
    chain.append(_function("F4999", ["t"], ["out"], [helper.make_node("Identity", ["t"], ["out"])]))
    assert not data_prop_allowed(_calling([helper.make_node("F0", ["x"], ["y"], domain="local")], chain))


def test_a_torch_export_with_nested_functions_keeps_data_propagation():
    """The TorchScript exporter writes each module as a function (`export_modules_as_functions`): a block calling
    Linear's and LayerNorm's functions, with the shapes it reshapes by, is bounded as the small model it is."""
    import io

    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.norm = torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)

        def forward(self, x):
            b, t, d = x.shape
            return self.norm(self.lin(x)).reshape(b, t, 2, 4).transpose(1, 2).reshape(b, t, d) + x

    buffer = io.BytesIO()
    torch.onnx.export(torch.nn.Sequential(Block(), Block()).eval(), (torch.randn(2, 5, 8),), buffer, dynamo=False,
                      opset_version=17, export_modules_as_functions={Block, torch.nn.Linear, torch.nn.LayerNorm},
                      input_names=["x"], dynamic_axes={"x": {0: "b", 1: "t"}})
    model = onnx.load_from_string(buffer.getvalue())
    assert {f.name for f in model.functions} == {"Block", "Linear", "LayerNorm"}
    assert data_prop_allowed(model) and data_prop_allowed(model, sized=False)


@pytest.mark.parametrize(("args", "says"), [(["diagnose", "--static"], "no findings"),
                                            (["check"], "while onnxruntime loads the model")])
def test_a_vector_widened_in_nested_functions_is_neither_inferred_nor_loaded(tmp_path, args, says):
    """12 KB whose nested functions hold 20 million shape values: 3 GB in onnx's inference, 5 GB in onnxruntime's
    load (measured at 13 doublings, 420 and 610 MB, growing with the values)."""
    path = tmp_path / "model.onnx"
    onnx.save(_widened_in_a_function(16), path)
    done = bounded_graphfix(*args, str(path), seconds=120, memory=CAP)
    assert done.returncode in (0, 1) and says in done.stdout, done.stdout + done.stderr
    assert "internal error" not in done.stdout + done.stderr
    assert done.peak_bytes < 1 << 30, f"{done.peak_bytes:,} bytes"
