"""graphfix.core.windows: a Conv's or Pool's attributes read once, ONNX's defaults filled in, and refused where
they do not describe the input's axes (a model's attributes are hostile input)."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper

import graphfix
from graphfix.core.windows import window_of


def test_defaults_are_onnx_s_and_the_kernel_falls_back_to_the_weight():
    window = window_of({}, 2, weight=(8, 3, 5, 3))
    assert window.kernel == (5, 3) and window.strides == (1, 1) and window.dilations == (1, 1)
    assert window.pads_at(0) == (0, 0) and window.output_padding == (0, 0)
    assert window_of({"kernel_shape": [3, 3]}, 2, weight=(8, 3, 5, 5)).kernel == (3, 3)  # the attribute wins


def test_reach_and_pads_read_per_axis():
    window = window_of({"kernel_shape": [3, 2], "dilations": [2, 1], "pads": [0, 1, 1, 2], "strides": [2, 1]}, 2)
    assert (window.reach(0), window.reach(1)) == (5, 2)
    assert (window.pads_at(0), window.pads_at(1)) == ((0, 1), (1, 2))
    assert window_of({}, 1).reach(0) is None  # a pool with no kernel, or a weight of unknown shape


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3, 3]}, {"kernel_shape": [3]}, {"kernel_shape": [3, 3], "strides": [2, 2, 2]},
    {"kernel_shape": [3, 3], "pads": [0, 0, 1]}, {"kernel_shape": [3, 3], "dilations": [1]},
    {"kernel_shape": [3, 3], "output_padding": [0, 0, 0]},
], ids=["long-kernel", "short-kernel", "long-strides", "odd-pads", "short-dilations", "long-output-padding"])
def test_attributes_for_another_number_of_axes_are_no_window(attrs):
    assert window_of(attrs, 2) is None
    assert window_of({}, 0) is None


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3], "strides": [2, 2, 2]}, {"kernel_shape": [3, 3], "pads": [0, 0, 1]},
    {"kernel_shape": [3, 3], "dilations": [1]},
], ids=["long-strides", "odd-pads", "short-dilations"])
def test_the_size_analysis_and_the_commands_leave_such_a_window(attrs):
    """Read by the size pass (its output length) and GF008: no crash, and onnxruntime's refusal is the one error."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], [0.1] * 108)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    found = graphfix.diagnose(model)  # the probe too: onnxruntime refuses the model, one finding says so
    assert [f.rule for f in found if f.severity.value == "error"] == ["GF000"], found
    assert "session could not be created" in found[0].message, found
