"""Data propagation's budget: a node sized by constants past it turns onnx's data propagation off, which would
hold each of its values as a dim (about 145 bytes each: 30 million from a 160-byte file are 4 GB)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import bounded_graphfix
from fixtures.shape_chains import chained, doubled
from onnx import TensorProto, helper

from graphfix.io.propagation import MAX_PROPAGATED_ELEMENTS, data_prop_allowed

N = 30_000_000
CAP = 2 << 30  # address space: the old inference needed 4 GB here


def _sized(op: str, n: int) -> onnx.ModelProto:
    """y = x + op(...) where op makes n elements from a constant [n]."""
    nodes = [helper.make_node("Constant", [], ["n"], value_ints=[n])]
    if op != "ConstantOfShape":
        nodes.append(helper.make_node("Constant", [], ["one"], value_floats=[1.0]))
    nodes.append({
        "ConstantOfShape": helper.make_node("ConstantOfShape", ["n"], ["c"],
                                            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        "Expand": helper.make_node("Expand", ["one", "n"], ["c"]),
        "Tile": helper.make_node("Tile", ["one", "n"], ["c"]),
    }[op])
    nodes.append(helper.make_node("Add", ["x", "c"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize(("op", "args"), [("ConstantOfShape", ["diagnose", "--static"]),
                                          ("Expand", ["diagnose", "--static"]), ("Tile", ["check", "--jobs", "1"])])
def test_a_node_sized_past_the_budget_is_inferred_without_data_propagation(op, args, tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(_sized(op, N), path)
    done = bounded_graphfix(*args, str(path), seconds=120, memory=CAP)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no findings" in done.stdout or "0 findings" in done.stdout, done.stdout
    assert done.peak_bytes < 1 << 30, f"{done.peak_bytes:,} bytes"


@pytest.mark.parametrize("op", ["ConstantOfShape", "Expand", "Tile"])
def test_a_node_sized_within_the_budget_keeps_data_propagation(op):
    assert data_prop_allowed(_sized(op, MAX_PROPAGATED_ELEMENTS))
    assert not data_prop_allowed(_sized(op, MAX_PROPAGATED_ELEMENTS + 1))


def test_a_long_1d_graph_input_turns_data_propagation_off():
    model = _sized("Expand", 4)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = N
    assert not data_prop_allowed(model)


def test_a_shape_too_long_to_read_counts_as_unbounded():
    """Ones around a long axis (squeezed away later) are no way past the budget."""
    model = _sized("ConstantOfShape", 1)
    model.graph.node[0].attribute[0].ints[:] = [1] * 5000 + [N]
    assert not data_prop_allowed(model)


def test_onnxsim_folds_no_constant_past_the_probe_budget(tmp_path, monkeypatch):
    """Found by a review: a dead node (a fix, so `repair` simplifies) beside `ConstantOfShape([N])`, 219 bytes:
    onnxsim's child folded the constant (4 GB at N = 10**9) while the probe's budget refused to run the model. The
    child now holds its data to what it needs plus the budget: that folding fails, and the rest goes on."""
    from graphfix.pipeline.simplify import OnnxsimChild

    nodes = [helper.make_node("Constant", [], ["n"], value_ints=[250_000_000]),  # 1 GB of floats
             helper.make_node("ConstantOfShape", ["n"], ["c"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("ReduceSum", ["c"], ["r"], keepdims=0), helper.make_node("Add", ["x", "r"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    monkeypatch.setenv("GRAPHFIX_MAX_PROBE_MEMORY", str(256 << 20))
    child = OnnxsimChild()  # reads the budget as it starts
    try:
        status, _ = child.run(path, tmp_path / "out.onnx", 120)
        with open(f"/proc/{child.process.pid}/status") as info:
            peak = next(int(line.split()[1]) << 10 for line in info if line.startswith("VmHWM:"))
    finally:
        child.close()
    assert peak < 768 << 20, f"status {status}, {peak:,} bytes"  # folded, it held 1.2 GB


def test_values_concatenated_past_the_budget_turn_data_propagation_off():
    """Found by a review: 1,000 copies of a constant of 1,000 values concatenated, and that again 1,000 times
    (11 KB): 10**9 values held as dims, 70 GB."""
    nodes = [helper.make_node("Constant", [], ["c0"], value_ints=list(range(1000)))]
    for level in (1, 2):
        nodes.append(helper.make_node("Concat", [f"c{level - 1}"] * 1000, [f"c{level}"], axis=0))
    nodes.append(helper.make_node("Shape", ["x"], ["s"]))
    nodes.append(helper.make_node("Concat", ["s", "c2"], ["y"], axis=0))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert not data_prop_allowed(model)
    del model.graph.node[2:]  # one level: 10**6 values, within the budget
    model.graph.node.append(helper.make_node("Concat", ["c1"], ["y"], axis=0))
    assert data_prop_allowed(model)


def test_a_tensor_the_probe_cannot_size_is_held_by_the_worker_s_memory_bound(tmp_path, monkeypatch):
    """Found by a review: one node sized past the budget turns data propagation off for the whole model, and then
    `ConstantOfShape(Add([N], 0))` has no size the probe's budget sees: onnxruntime made all of it (2 GB here, 20
    GB at N = 5e9 on a 24 GB machine). The worker's data is bounded (GRAPHFIX_MAX_MEMORY, else three quarters of
    the memory available): the allocation fails and the command ends with its finding, not the machine."""
    nodes = [helper.make_node("Constant", [], ["k"], value_ints=[500_000_000]),  # 2 GB of floats
             helper.make_node("Constant", [], ["z"], value_ints=[0]), helper.make_node("Add", ["k", "z"], ["k2"]),
             helper.make_node("ConstantOfShape", ["k2"], ["c"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("ReduceSum", ["c"], ["r"], keepdims=0), helper.make_node("Add", ["x", "r"], ["y"]),
             helper.make_node("Constant", [], ["k3"], value_ints=[1 << 21]),  # sized past the budget: no data prop
             helper.make_node("ConstantOfShape", ["k3"], ["c3"],
                              value=helper.make_tensor("v3", TensorProto.FLOAT, [1], [0.0])),
             helper.make_node("ReduceSum", ["c3"], ["r3"], keepdims=0), helper.make_node("Add", ["y", "r3"], ["y3"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
                              [helper.make_tensor_value_info("y3", TensorProto.FLOAT, ["B", 4])])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    monkeypatch.setenv("GRAPHFIX_MAX_MEMORY", str(512 << 20))
    done = bounded_graphfix("diagnose", str(path), seconds=120)
    assert done.returncode == 1 and "internal error" not in done.stderr, done.stdout + done.stderr
    assert done.peak_bytes < 1 << 30, f"{done.peak_bytes:,} bytes"


def _shape_concatenated(rank: int, copies: int) -> onnx.ModelProto:
    """Helper 55: `Shape` of an input of `rank` dims, concatenated `copies` times, twice (11 KB at 1,000 and 1,000:
    10**9 values held while inferring, and again while onnxruntime loads the graph)."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Concat", ["s"] * copies, ["c1"], axis=0),
             helper.make_node("Concat", ["c1"] * copies, ["c2"], axis=0),
             helper.make_node("Cast", ["c2"], ["y"], to=TensorProto.INT64)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1] * rank)],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_a_shape_counts_one_value_per_dim_of_its_input():
    assert data_prop_allowed(_shape_concatenated(1, 1000))
    assert not data_prop_allowed(_shape_concatenated(60, 1000))
    assert not data_prop_allowed(_shape_concatenated(1000, 1000))


@pytest.mark.parametrize(("rank", "args", "says"), [
    (1000, ["diagnose", "--static"], "no findings"),
    (60, ["check"], "while onnxruntime loads the model"),
    (1000, ["check"], "while onnxruntime loads the model"),
])
def test_shape_values_past_the_budget_are_neither_inferred_nor_loaded(tmp_path, rank, args, says):
    path = tmp_path / "model.onnx"
    onnx.save(_shape_concatenated(rank, 1000), path)
    done = bounded_graphfix(*args, str(path), seconds=120, memory=CAP)
    assert done.returncode in (0, 1) and says in done.stdout, done.stdout + done.stderr
    assert "internal error" not in done.stdout + done.stderr
    assert done.peak_bytes < 1 << 30, f"{done.peak_bytes:,} bytes"


def test_an_input_of_more_dims_than_numpy_holds_is_not_run_and_says_so(tmp_path):
    """Helper 55: a Relu of a 70-dim input was an internal error (numpy's `np.empty` refuses past 64 dims)."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1] * 70)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1] * 70)])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    done = bounded_graphfix("check", str(path), seconds=120)
    assert done.returncode == 1 and "has 70 dims" in done.stdout and "probe-skipped" in done.stdout, done.stdout
    assert "internal error" not in done.stdout + done.stderr


def test_ranks_grown_by_ops_that_add_a_dim_are_counted():
    """Helper 56: 999 OneHots take a 1-D input to 1,000 dims, which the rank walk took for 1: its Shape,
    concatenated 100 times twice, held 10**7 values while onnxruntime loaded it (1.6 GB)."""
    nodes = [helper.make_node("Constant", [], ["depth"], value_ints=[1]),
             helper.make_node("Constant", [], ["values"], value_ints=[0, 1])]
    previous = "x"
    for i in range(999):
        nodes.append(helper.make_node("OneHot", [previous, "depth", "values"], [f"h{i}"]))
        previous = f"h{i}"
    nodes += [helper.make_node("Shape", [previous], ["s"]),
              helper.make_node("Concat", ["s"] * 100, ["c1"], axis=0),
              helper.make_node("Concat", ["c1"] * 100, ["y"], axis=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    assert not data_prop_allowed(model, sized=False)
    del model.graph.node[-1]  # one Concat: 10**5 values, within the budget
    model.graph.output[0].name = "c1"
    assert data_prop_allowed(model, sized=False)


def _reshape_chain(layers: int, sliced: str) -> onnx.ModelProto:
    """x reshaped, layer after layer, to its shape concatenated with slices of itself: `sliced` is the slices'
    (start, end) pairs, as ONNX text."""
    consts, nodes, x = [], [], "x"
    for i in range(layers):
        parts = []
        for k, (start, end) in enumerate(sliced):
            consts += [f"s{i}_{k} = Constant<value = int64[1] {{{start}}}>()",
                       f"e{i}_{k} = Constant<value = int64[1] {{{end}}}>()"]
            nodes.append(f"p{i}_{k} = Slice(v{i}, s{i}_{k}, e{i}_{k})")
            parts.append(f"p{i}_{k}")
        nodes = [*nodes[:-len(sliced)], f"v{i} = Shape({x})", *nodes[-len(sliced):],
                 f"c{i} = Concat<axis = 0>({', '.join(parts)})", f"r{i} = Reshape({x}, c{i})"]
        x = f"r{i}"
    body = "\n".join([*consts, *nodes, f"y = Identity({x})"])
    return onnx.parser.parse_model(f"""< ir_version: 8, opset_import: ["" : 17] >
        g (float[1, 1] x) => (float[?] y) {{ {body} }}""")


@pytest.mark.parametrize(("sliced", "allowed"), [
    ([(0, 1), (1, 9223372036854775807)], True),  # unflatten's shape[:k] and shape[k:]: the rank stays
    ([(0, 9223372036854775807), (-1, 9223372036854775807)], True),  # the shape and its last dim: one more a layer
    ([(-3, 9223372036854775807), (-3, 9223372036854775807)], True),  # the last three dims twice: at most 6
    ([(0, 9223372036854775807), (0, 9223372036854775807)], False),  # the whole shape twice: it doubles
    ([(0, 9223372036854775807), (1, 9223372036854775807)], False),  # all but one dim more: nearly so
])
def test_a_slice_of_a_shape_counts_what_its_constant_bounds_keep(sliced, allowed):
    """A torchvision ViT slices each layer's shape around the axis it unflattens (`shape[:2]`, `shape[3:]`, its
    bounds computed from constants by Mod and Add): counted as the whole shape twice, the bound on the rank
    doubled with every layer and a healthy 12-layer ViT was not run (helper 62). Slices that do grow the rank
    still count, as onnxruntime's propagation would hold them."""
    assert data_prop_allowed(_reshape_chain(24, sliced), sized=False) is allowed


def test_ops_whose_output_rank_is_known_count_that_rank():
    """Shape gives a vector, Size and a Squeeze of every axis a scalar, Gather r + q - 1 dims, Einsum a dim per
    output letter (MaxViT's relative attention summed both inputs' ranks at each of its Einsums)."""
    from onnx import helper

    from graphfix.io.propagation import _rank

    ranks = {"x": 6.0, "i": 0.0, "v": 1.0, "axes": 1.0}
    cases = [(helper.make_node("Shape", ["x"], ["o"]), 1), (helper.make_node("Size", ["x"], ["o"]), 0),
             (helper.make_node("Gather", ["x", "i"], ["o"]), 5),
             (helper.make_node("Squeeze", ["x"], ["o"], axes=[0, 1]), 4),
             (helper.make_node("Einsum", ["x", "x"], ["o"], equation="abcdef,abcdeg->abcfg"), 5),
             (helper.make_node("Einsum", ["x", "x"], ["o"], equation="...ij,...jk->...ik"), 8)]
    for node, rank in cases:
        assert _rank(node, ranks, {}) == rank, node.op_type


def _slice_end_past_doubles() -> onnx.ModelProto:
    """A Slice of a rank-255 input's shape up to `(2**61 + 255) - 2**61`: 255 in int64, 0 in doubles."""
    from onnx import numpy_helper

    big = [numpy_helper.from_array(np.array([v], np.int64), name)
           for name, v in (("a", 2 ** 61 + 255), ("b", 2 ** 61), ("zero", 0))]
    nodes = [helper.make_node("Shape", ["x"], ["v"]), helper.make_node("Sub", ["a", "b"], ["end"]),
             helper.make_node("Slice", ["v", "zero", "end"], ["s"])]
    return doubled(nodes, "s", 13, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1] * 255)], big)


def _squeeze_twice_one_axis() -> onnx.ModelProto:
    """Squeeze(axes=[0] * 40) of a rank-40 input removes one dim, not 40: its Shape has 39 values."""
    nodes = [helper.make_node("Squeeze", ["x", "axes"], ["q"]), helper.make_node("Shape", ["q"], ["s"])]
    axes = helper.make_tensor("axes", TensorProto.INT64, [40], [0] * 40)
    return doubled(nodes, "s", 16, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1] * 40)], [axes])


def _inside_a_function(op: str) -> onnx.ModelProto:
    """A model-local function, concatenating with itself 13 times in its body the Shape of the Identity of its
    input (a tensor of rank 255), or a Gather by 255 indices of its input (a shape vector)."""
    body = ([helper.make_node("Constant", [], ["idx"], value_ints=[0] * 255),
             helper.make_node("Gather", ["t", "idx"], ["c"], axis=0)] if op == "Gather"
            else [helper.make_node("Identity", ["t"], ["i"]), helper.make_node("Shape", ["i"], ["c"])])
    body = chained([*body, *(helper.make_node("Concat", ["c", "c"], [f"c{k}"], axis=0) for k in range(13))])
    function = helper.make_function("local", "F", ["t"], ["out"], body, [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("Shape", ["x"], ["s"]) if op == "Gather" else helper.make_node("Identity", ["x"], ["s"]),
             helper.make_node("F", ["s"], ["f"], domain="local")]
    rank = 2 if op == "Gather" else 255
    return doubled(nodes, "f", 0, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1] * rank)],
                    functions=[function])


@pytest.mark.parametrize("build", [_slice_end_past_doubles, _squeeze_twice_one_axis,
                                   lambda: _inside_a_function("Gather"), lambda: _inside_a_function("Identity")],
                         ids=["slice-end-past-doubles", "squeeze-twice-one-axis", "function-gather",
                              "function-identity"])
def test_a_tighter_rank_is_never_below_the_true_one(build):
    """Helper 65, against the exact ranks and slice counts above: a Slice end folded through doubles (0 where int64
    gives 255), a Squeeze naming one axis 40 times (a rank-0 bound for 39 dims), a function's input taken for a
    scalar (its Gather by 255 indices held one value, its Identity none). Each let a 2 KB chain through that
    doubled to millions of values: 4 to 6.5 GB in onnx's inference and onnxruntime's load."""
    assert not data_prop_allowed(build(), sized=False)
