"""graphfix.analysis.sizes.domain: the least input size at which strided Conv/Pool stacks have enough positions,
checked against onnxruntime itself: one size less has fewer output frames (or fails), that size has them."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import parse

from graphfix.analysis.sizes.domain import input_minimums, input_steps

# (conv/pool layers as ONNX text over float[B, 1, S] x, each ending in a tensor named by the next)
STACKS = {
    "conv-k16-s8": "y = Conv<kernel_shape=[16], strides=[8]>(x, w1)",
    "two-strided": "h = Conv<kernel_shape=[16], strides=[8]>(x, w1)\n y = Conv<kernel_shape=[4], strides=[2]>(h, w2)",
    "padded-dilated": "y = Conv<kernel_shape=[3], strides=[2], pads=[2, 1], dilations=[3]>(x, w3)",
    # stride 1 after the first pool: onnxruntime truncates (1 - 2) / 2 to 0 and "runs" a kernel-2 stride-2 pool on
    # a length-1 input, where the ONNX formula (and PyTorch) has no output
    "pool": "h = MaxPool<kernel_shape=[5], strides=[3]>(x)\n y = AveragePool<kernel_shape=[2], strides=[1]>(h)",
}
WEIGHTS = {"w1": [1, 1, 16], "w2": [1, 1, 4], "w3": [1, 1, 3]}


def stack(body: str) -> onnx.ModelProto:
    used = [name for name in WEIGHTS if name in body]
    def weight(name: str) -> str:
        dims = WEIGHTS[name]
        return f"float[{', '.join(map(str, dims))}] {name} = {{{', '.join(['0.5'] * int(np.prod(dims)))}}}"

    weights = ", ".join(weight(n) for n in used)
    return parse(f"""< ir_version: 8, opset_import: ["" : 17] >
        g (float[B, 1, S] x) => (float[B, 1, F] y) <{weights}> {{
            {body}
        }}""")


def frames_at(model: onnx.ModelProto, samples: int) -> int:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    try:
        (y,) = session.run(None, {"x": np.ones((1, 1, samples), np.float32)})
    except Exception:
        return 0
    return y.shape[-1]


@pytest.mark.parametrize("name", STACKS)
@pytest.mark.parametrize("frames", [1, 4])
def test_least_size_is_where_onnxruntime_first_gives_that_many_frames(name, frames):
    model = stack(STACKS[name])
    least = input_minimums(model, frames)["S"]
    assert frames_at(model, least) >= frames
    assert least == 1 or frames_at(model, least - 1) < frames


def test_graph_without_windowed_ops_has_no_minimum():
    model = parse("""< ir_version: 8, opset_import: ["" : 17] >
        g (float[B, T] x) => (float[B, T] y) { y = Relu(x) }""")
    assert input_minimums(model) == {}


def test_a_conv_inside_an_if_branch_bounds_the_input_it_reads():
    """asteroid's scripted filterbank encoder: `Conv` on the 3-D input in one branch of an If, a Reshape and the same
    Conv in the other. The branch reads the outer input, whose shape the analysis knows: its length bounds it."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w1", TensorProto.FLOAT, [1, 1, 16], [0.5] * 16)
    conv = helper.make_node("Conv", ["x", "w1"], ["z"], kernel_shape=[16], strides=[8])
    frames = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 1, "F"])
    branch = helper.make_graph([conv], "branch", [], [frames])
    choose = helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph(
        [choose], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1, "S"]),
                        helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 1, "F"])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    least = input_minimums(model)
    assert least == {"S": 16 + 8 * 3}  # four output frames
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"x": np.ones((1, 1, least["S"]), np.float32), "flag": np.array(True)}
    assert session.run(None, feeds)[0].shape[-1] == 4


@pytest.mark.parametrize("name", STACKS)
def test_a_larger_probe_size_gives_every_strided_output_another_frame(name):
    """`input_strides`: the least growth past the export size at which onnxruntime gives more output frames (a
    stride-16 stack at 400 samples: 403 gives the same frames, so a probe there showed nothing new)."""
    from graphfix.analysis.sizes.domain import input_strides
    from graphfix.validate import ValidationOptions, probe_sizes

    model = stack(STACKS[name])
    (grow,) = input_strides(model, {"S": 400}).values()
    assert frames_at(model, 400 + grow) > frames_at(model, 400) == frames_at(model, 400 + grow - 1)
    larger = [b["S"] for b in probe_sizes(model, ValidationOptions(trace_sizes={"S": 400})) if b["S"] > 400]
    assert larger and all(frames_at(model, s) > frames_at(model, 400) for s in larger)


def test_a_dim_torch_export_declares_k_n_plus_c_takes_those_sizes():
    model = parse("""< ir_version: 8, opset_import: ["" : 17] >
        g (float[1, "2*H2", "2*W2 + 1", "4*t - 1"] x) => (float[1, "2*H2", "2*W2 + 1", "4*t - 1"] y) {
            y = Relu(x)
        }""")
    assert input_steps(model) == {"2*H2": (2, 0), "2*W2 + 1": (2, 1), "4*t - 1": (4, 3)}
    from graphfix.validate import ValidationOptions, probe_sizes

    sizes = probe_sizes(model, ValidationOptions())
    assert all(b["2*H2"] % 2 == 0 and b["2*W2 + 1"] % 2 == 1 and b["4*t - 1"] % 4 == 3 for b in sizes), sizes
