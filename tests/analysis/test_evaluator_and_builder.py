"""The one evaluator (constant folding and shape vectors) and the one builder (`Shape(x)[i]` vectors)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from conftest import parse, run

from graphfix.analysis.builders import Builder
from graphfix.analysis.constants import Sym
from graphfix.analysis.context import RuleContext
from graphfix.core.rule import RuleOptions
from graphfix.io.graphs import export_graph, import_graph

EXPAND_MINUS_ONE = """
< ir_version: 8, opset_import: ["" : 17] >
g (float[B, 1, 4] x) => (float[B, 3, 4] y) {
    n = Constant <value = int64[1] {3}> ()
    shape_b = Shape <start = 0, end = 1> (x)
    ones = ConstantOfShape <value = int64[1] {1}> (n)
    minus = Constant <value = int64 {-1}> ()
    scaled = Mul (ones, minus)
    wanted = Constant <value = int64[3] {-1, 3, 4}> ()
    eq = Equal (wanted, scaled)
    fixed = Where (eq, ones, wanted)
    y = Expand (x, fixed)
    four = Constant <value = int64[1] {4}> ()
    vec = Concat <axis = 0> (shape_b, four)
}
"""


def _context(text: str) -> RuleContext:
    model = parse(text)
    return RuleContext(model, import_graph(model), None, RuleOptions())


def test_value_folds_a_constant_only_chain():
    ctx = _context(EXPAND_MINUS_ONE)
    fixed = ctx.tensors["fixed"]
    assert ctx.evaluator.value(fixed).tolist() == [1, 3, 4]
    assert ctx.evaluator.value(ctx.tensors["x"]) is None  # a graph input is not constant


def test_elems_keep_dynamic_dims_as_symbols_and_read_folded_constants():
    ctx = _context(EXPAND_MINUS_ONE)
    elems = ctx.evaluator.elems(ctx.tensors["vec"])
    assert elems[1] == 4
    assert isinstance(elems[0], Sym) and elems[0].kind == "dim" and elems[0].tensor is ctx.tensors["x"]
    assert ctx.evaluator.elems(ctx.tensors["fixed"]) == [1, 3, 4]  # the two views agree


def test_builder_vector_reads_dims_at_run_time():
    model = parse("""
        < ir_version: 8, opset_import: ["" : 17] >
        g (float[B, T, 8] x) => (float[B, T, 8] y) { y = Identity (x) }
    """)
    graph = import_graph(model)
    x = graph.inputs[0]
    vector = Builder(graph, "test", 17).vector([(x, 1), 2, 4, (x, 0)])
    vector.dtype, vector.shape = np.int64, [4]
    graph.outputs.append(vector)
    out = export_graph(graph, model)
    (_, got) = run(out, {"x": np.zeros((3, 5, 8), np.float32)})
    assert got.tolist() == [5, 2, 4, 3]
    assert [n.op for n in graph.nodes if n.op == "Shape"] == ["Shape", "Shape"]


def test_builder_keeps_an_all_constant_vector_constant():
    graph = gs.Graph(opset=17)
    assert isinstance(Builder(graph, "c", 17).vector([1, 2]), gs.Constant) and not graph.nodes


BOMBS = """
< ir_version: 8, opset_import: ["" : 17] >
g (float[B, 4] x) => (float[B, 4] y) {
    side = Constant <value = int64[2] {8192, 8192}> ()
    square = ConstantOfShape <value = int64[1] {1}> (side)
    rows = Constant <value = int64[4096, 1] {ONES}> ()
    cols = Constant <value = int64[1, 4096] {ONES}> ()
    table = Add (rows, cols)
    words = Constant <value = string[2] {"2**99", "4"}> ()
    y = Identity (x)
}
""".replace("ONES", ", ".join(["1"] * 4096))


def test_folding_never_allocates_what_is_too_large_to_be_a_shape_vector():
    """Found by review (helper 36): an 8192 x 8192 ConstantOfShape was filled (512 MB; a side of 65536 needs 32 GB)
    before its size was checked, and a broadcast of two 4096-element vectors made 16M elements. Both are unknown
    now, with nothing allocated; a string tensor is never a size (it crashed GF004 with `int('2**99')`)."""
    import tracemalloc

    ctx = _context(BOMBS)
    tracemalloc.start()
    try:
        found = [ctx.evaluator.value(ctx.tensors[name]) for name in ("square", "table", "words")]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak
    assert [v is None for v in found] == [True, True, True], found


def test_two_builders_of_one_prefix_name_their_tensors_apart():
    """Two fixes of one node's entries build with the same prefix (`{node}_gf004`): the second's names were the
    first's, and its Concat read a Slice the first had made (helper 138: an Expand's batch and length rebuilt, a
    graph onnxruntime could not load)."""
    x = gs.Variable("x", np.float32, ["B", "T"])
    graph = gs.Graph(inputs=[x], outputs=[])
    first = Builder(graph, "/Expand_gf004", 17)
    one = first.op("Shape", [x])
    second = Builder(graph, "/Expand_gf004", 17)
    two = second.op("Shape", [x])
    assert one.name != two.name and graph.nodes[0].name != graph.nodes[1].name
    assert Builder(graph, "/Expand_gf004", 17).prefix not in (first.prefix, second.prefix)
