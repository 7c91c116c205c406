"""The symbolic size analysis: shapes as expressions, constraints solved, range facts, relations, time bound."""

from __future__ import annotations

import onnx_graphsurgeon as gs
import pytest
from conftest import parse

from graphfix.analysis.context import RuleContext
from graphfix.analysis.shapes import infer_shapes
from graphfix.analysis.sizes import (
    Constraint,
    Sizes,
    baked_pads,
    baked_reshapes,
    baked_slices,
    bind,
    relations,
    sizes_of,
    solve,
    tied_dims,
)
from graphfix.core.rule import RuleOptions

# MultiheadAttention's key reshape as the TorchScript exporter writes it: [7, B * 4, 4] with 7 baked.
MHA_KEY = """
< ir_version: 8, opset_import: ["" : 17] >
g (float[T, B, 16] k) => (float[?, ?, ?] y) {
    shape = Shape(k)
    one = Constant <value = int64 {1}> ()
    b = Gather <axis = 0> (shape, one)
    heads = Constant <value = int64 {4}> ()
    bh = Mul(b, heads)
    zero = Constant <value = int64[1] {0}> ()
    bh1 = Unsqueeze(bh, zero)
    len = Constant <value = int64[1] {7}> ()
    dim = Constant <value = int64[1] {4}> ()
    target = Concat <axis = 0> (len, bh1, dim)
    y = Reshape(k, target)
}
"""

HEALTHY = MHA_KEY.replace("len = Constant <value = int64[1] {7}> ()",
                          "t0 = Constant <value = int64 {0}> ()\n    t = Gather <axis = 0> (shape, t0)\n"
                          "    len = Unsqueeze(t, zero)")

# BERT's positions: a 512-row table sliced at the sequence length, added to the token embeddings.
TABLE = """
< ir_version: 8, opset_import: ["" : 17] >
g (int64[B, S] ids, float[B, S, 8] emb) => (float[B, S, 8] y) {
    table = Constant <value = float[512, 8] {VALUES}> ()
    shape = Shape(ids)
    start = Constant <value = int64[1] {0}> ()
    one = Constant <value = int64[1] {1}> ()
    two = Constant <value = int64[1] {2}> ()
    end = Slice(shape, one, two)
    rows = Slice(table, start, end, start)
    y = Add(emb, rows)
}
""".replace("VALUES", ", ".join(["0.5"] * 4096))

# A padding mask over the frames of a strided convolution, fixed as Where(mask[..., None], 0, h).
FRAMES = """
< ir_version: 8, opset_import: ["" : 17] >
g (float[B, 1, N] audio, bool[B, F] pad) => (float[B, 4, F] y) {
    w = Constant <value = float[4, 1, 10] {VALUES}> ()
    h = Conv <strides = [5]> (audio, w)
    axes = Constant <value = int64[1] {1}> ()
    mask = Unsqueeze(pad, axes)
    zero = Constant <value = float {0}> ()
    y = Where(mask, zero, h)
}
""".replace("VALUES", ", ".join(["0.1"] * 40))


def analysed(text: str, budget_s: float = 5.0) -> tuple[Sizes, gs.Graph]:
    model = infer_shapes(parse(text))
    graph = gs.import_onnx(model)
    ctx = RuleContext(model, graph, None, RuleOptions(static=True))
    sizes = sizes_of(ctx) if budget_s == 5.0 else Sizes(graph, ctx.evaluator.value, budget_s=budget_s)
    return sizes, graph


def tensor(graph: gs.Graph, name: str) -> gs.Tensor:
    return graph.tensors()[name]


def test_shape_vectors_are_expressions_and_the_element_count_is_solved():
    sizes, graph = analysed(MHA_KEY)
    assert [str(v) for v in sizes.value(tensor(graph, "target"))] == ["7", "4*B", "4"]
    (baked,) = list(baked_reshapes(sizes))
    assert (str(baked.solution.symbol), baked.solution.value) == ("T", 7)
    assert [(e.index, e.value, str(e.expr)) for e in baked.entries] == [(0, 7, "T")]


def test_a_reshape_whose_shape_is_computed_has_no_constraint():
    sizes, graph = analysed(HEALTHY)
    assert sizes.constraints == []
    assert sizes.dims(tensor(graph, "y")) == ["T", "4*B", 4]


def test_a_table_slice_bounds_the_length_so_min_is_the_length():
    sizes, graph = analysed(TABLE)
    assert sizes.dims(tensor(graph, "rows")) == ["S", 8]
    symbol = sizes.symbols["S"]
    assert sizes.bounds[symbol][0] == 512
    assert sizes.constraints == []  # S + positions: broadcasting holds at every valid S


def test_a_mask_tied_to_conv_frames_gives_a_relation_between_input_dims():
    sizes, graph = analysed(FRAMES)
    assert sizes.dims(tensor(graph, "h")) == ["B", 4, "floor(N/5) - 1"]
    tied = relations(sizes)
    assert str(tied["F"]) == "floor(N/5) - 1"
    assert bind({"B": 2, "N": 400, "F": 12}, tied) == {"B": 2, "N": 400, "F": 79}
    # too few samples for a frame: the samples grow to the least count that gives one (the front end's minimum)
    assert bind({"B": 2, "N": 3, "F": 12}, tied) == {"B": 2, "N": 10, "F": 1}
    assert tied_dims(parse(FRAMES)).keys() == {"F"}


def test_a_solved_value_must_be_a_whole_positive_size():
    """16*B*T = 7*4*B*3 holds at T = 21/4 only, which is no size: nothing is claimed baked."""
    sizes, _ = analysed(MHA_KEY.replace("dim = Constant <value = int64[1] {4}>",
                                        "dim = Constant <value = int64[1] {3}>"))
    assert len(sizes.constraints) == 1
    assert list(baked_reshapes(sizes)) == []


def test_past_its_time_budget_the_analysis_is_incomplete_never_wrong():
    sizes, _ = analysed(MHA_KEY, budget_s=0.0)
    assert sizes.incomplete and "stopped" in sizes.incomplete
    assert sizes.constraints == []
    assert list(baked_reshapes(sizes)) == []


def test_an_op_the_pass_does_not_model_keeps_onnx_shapes():
    text = """
    < ir_version: 8, opset_import: ["" : 17] >
    g (float[B, T, 8] x) => (float[B, 8, T] y) {
        y = Einsum <equation = "btd->bdt"> (x)
    }
    """
    sizes, graph = analysed(text)
    assert sizes.dims(tensor(graph, "y")) == ["B", 8, "T"]


# `x[:, 1:] - x[:, :int(T) - 1]` traced at T=8: the second slice ends at the constant 7.
DELTA = """
< ir_version: 8, opset_import: ["" : 17] >
g (float[B, T, 4] x) => (float[B, ?, 4] y) {
    zero = Constant <value = int64[1] {0}> ()
    one = Constant <value = int64[1] {1}> ()
    axis = Constant <value = int64[1] {1}> ()
    big = Constant <value = int64[1] {9223372036854775807}> ()
    seven = Constant <value = int64[1] {7}> ()
    later = Slice(x, one, big, axis)
    cut = Slice(x, zero, seven, axis)
    y = Sub(later, cut)
}
"""


def test_a_constant_slice_end_is_solved_on_the_constant_side_of_its_min():
    sizes, graph = analysed(DELTA)
    [constraint] = sizes.constraints
    solution = solve(constraint)
    assert (solution.symbol.name, solution.value, str(solution.cut)) == ("T", 8, "Min(7, T)")
    [baked] = baked_slices(sizes)
    assert (baked.node.name, baked.value, str(baked.expr)) == (graph.nodes[-2].name, 7, "T - 1")


def test_a_length_cap_is_not_a_baked_size():
    import sympy

    s = sympy.Symbol("S", integer=True, positive=True)
    assert solve(Constraint("broadcast", None, sympy.Min(512, s), s)) is None  # holds on S <= 512: a cap
    assert solve(Constraint("broadcast", None, sympy.Min(512, s), s - 1)).value == 513  # holds at one S only


def test_a_size_inside_floor_or_mod_is_not_handed_to_sympy_solve(monkeypatch):
    """timm's Swin under dynamo pads its windows: constraints like `32*B*floor(H/4)*... = 512*B*floor(...)` hold at
    every size, and sympy.solve spent 47 s on 18 of them before giving up. A symbol that appears only inside a
    floor, Mod or Min is never solved for (sympy cannot isolate it); the polynomial one still is."""
    import sympy

    h, b = sympy.Symbol("H", integer=True, positive=True), sympy.Symbol("B", integer=True, positive=True)
    from graphfix.core.lazy import sympy as lazy  # what the analysis calls sympy through

    tried = []
    real = sympy.solve
    monkeypatch.setattr(lazy, "solve", lambda equation, symbol: tried.append(symbol) or real(equation, symbol),
                        raising=False)
    assert solve(Constraint("reshape", None, 4 * b * sympy.floor(h / 4), b * h)) is None
    # H only inside floor(H/4): never tried; B neither, its one root at the sampled H's is 0, no size (graphfix.
    # analysis.sizes.roots)
    assert tried == []
    assert solve(Constraint("reshape", None, b * b + 2, 3 * b)) is None and tried == [b]  # B = 1 or 2: sympy's
    assert solve(Constraint("reshape", None, 7 * b, 14)).value == 2


# `F.pad(x, (0, 0, 0, (4 - int(T) % 4) % 4))` traced at T=7, then split into chunks of 4.
CHUNKED = """
< ir_version: 8, opset_import: ["" : 17] >
g (float[B, T, 8] x) => (float[B, ?, 4, 8] y) {
    pads = Constant <value = int64[6] {0, 0, 0, 0, 1, 0}> ()
    padded = Pad(x, pads)
    target = Constant <value = int64[4] {0, -1, 4, 8}> ()
    y = Reshape(padded, target)
}
"""


def test_a_pad_that_rounds_up_at_export_only_is_found_from_the_chunks_split_after_it():
    sizes, _ = analysed(CHUNKED)
    assert [(str(m.left), int(m.right)) for m in sizes.multiples] == [("T + 1", 4)]
    assert sizes.constraints == []  # a residue class, not one size: kept apart from what `solve` reads
    [pad] = baked_pads(sizes)
    assert (pad.node.op, pad.position, pad.value, pad.chunk) == ("Pad", 4, 1, 4)
    assert [int(pad.expr.subs(pad.length, t)) for t in range(4, 12)] == [0, 3, 2, 1, 0, 3, 2, 1]
    healthy = CHUNKED.replace("{0, 0, 0, 0, 1, 0}", "{0, 0, 0, 0, 4, 0}")  # a pad of a whole chunk is no round-up
    assert list(baked_pads(analysed(healthy)[0])) == []


def test_a_fill_value_no_integer_holds_leaves_that_node_unknown():
    """ConstantOfShape filled with inf (a hostile model): int(inf) overflows; the pass keeps onnx's shapes there and
    goes on, as for any op variant it does not model (a review found both passes crashing on it)."""
    sizes, graph = analysed("""
< ir_version: 8, opset_import: ["" : 17] >
g (float[B, T] x) => (float[B, T] y) {
    three = Constant <value = int64[1] {3}> ()
    filled = ConstantOfShape <value = float[1] {inf}> (three)
    shape = Shape(x)
    y = Reshape(x, shape)
}
""")
    filled = next(n for n in graph.nodes if n.op == "ConstantOfShape").outputs[0]
    assert sizes.value(filled) is None and not sizes.incomplete
    assert sizes.dims(graph.outputs[0]) == ["B", "T"]


STRIDED = """
< ir_version: 8, opset_import: ["" : 17] >
g (float[B, T, 4] x) => (float[B, ?, 4] y) {
    starts = Constant <value = int64[1] {START}> ()
    ends = Constant <value = int64[1] {END}> ()
    axes = Constant <value = int64[1] {1}> ()
    steps = Constant <value = int64[1] {STEP}> ()
    y = Slice(x, starts, ends, axes, steps)
}
"""
BIG = 2**63 - 1  # what the exporters write for "to the end"


@pytest.mark.parametrize(("start", "end", "step"), [(0, BIG, 2), (1, BIG, 3), (-5, BIG, 2), (0, -1, 2), (2, 7, 2),
                                                    (-1, -BIG, -1), (-1, -BIG, -2), (BIG, -BIG, -3),
                                                    (BIG, BIG, 2)])
def test_a_strided_slice_of_a_length_has_the_length_numpy_gives(start, end, step):
    """`x[:, s:e:k]` of a dynamic length: a strided window's count, at every length where the start is inside."""
    import sympy

    text = STRIDED.replace("START", str(start)).replace("END", str(end)).replace("STEP", str(step))
    sizes, graph = analysed(text)
    dim = sympy.sympify(sizes.dims(tensor(graph, "y"))[1])
    for length in range(6, 40):
        assert int(dim.subs({s: length for s in dim.free_symbols})) == len(range(length)[start:end:step]), dim


def test_a_strided_slice_read_from_the_middle_backwards_is_not_guessed():
    sizes, graph = analysed(STRIDED.replace("START", "3").replace("END", "0").replace("STEP", "-1"))
    assert sizes.dims(tensor(graph, "y"))[1] is None


RESIZED = """
< ir_version: 8, opset_import: ["" : OPSET] >
g (float[B, 2, H, W] x) => (float[?, ?, ?, ?] y) {
    scales = Constant <value = float[4] {1.0, 1.0, SH, SW}> ()
    y = Resize <mode = "nearest"> (x, ARGS)
}
"""


@pytest.mark.parametrize(("opset", "args"), [(17, ", scales"), (10, "scales")])
@pytest.mark.parametrize(("sh", "sw", "followed"), [(2.0, 0.5, True), (1.25, 3.0, True), (0.25, 1.0, True),
                                                    (1 / 3, 2.0, False), (1.1, 2.0, False)])
def test_a_resize_by_scales_has_the_size_onnxruntime_gives(opset, args, sh, sw, followed):
    """floor(d * scale) for scales whose products are exact in float (HRNet's and FPNs' upsampling by 2 meets a
    branch at the finer resolution); others are not guessed (onnxruntime rounds them in float)."""
    import numpy as np
    import onnxruntime as ort
    import sympy

    text = RESIZED.replace("OPSET", str(opset)).replace("ARGS", args).replace("SH", repr(sh)).replace("SW", repr(sw))
    sizes, graph = analysed(text)
    dims = sizes.dims(tensor(graph, "y"))
    if not followed:
        assert list(dims[2:]) == [None, None], dims
        return
    session = ort.InferenceSession(parse(text).SerializeToString(), providers=["CPUExecutionProvider"])
    for h, w in [(5, 7), (9, 16), (13, 31), (40, 23)]:
        want = session.run(None, {"x": np.zeros((1, 2, h, w), np.float32)})[0].shape[2:]
        at = {"H": h, "W": w}
        got = [int(d.subs({s: at[s.name] for s in d.free_symbols})) for d in map(sympy.sympify, dims[2:])]
        assert tuple(got) == want, (dims, h, w)


# SDPA's head dims as the dynamo exporter reads them: the shape's entries from INT64_MIN (the start) to -2.
FROM_START = """
< ir_version: 8, opset_import: ["" : 17] >
g (float[B, H, T, 8] q) => (int64[?] lead) {
    shape = Shape(q)
    start = Constant <value = int64[1] {-9223372036854775808}> ()
    end = Constant <value = int64[1] {-2}> ()
    lead = Slice(shape, start, end)
}
"""


def test_a_slice_from_int64_min_starts_at_the_start():
    """`dim + INT64_MIN` made that slice 2**63 - 2 entries long, a size the analysis then carried on (and which
    now ends the screen: no size is past int64)."""
    assert analysed(FROM_START)[0].screened()  # asked first: a pass run already is what it reads
    sizes, graph = analysed(FROM_START)
    assert sizes.dims(tensor(graph, "lead")) == [2]
    assert [str(v) for v in sizes.value(tensor(graph, "lead"))] == ["B", "H"]


@pytest.mark.parametrize(("axis", "dims"), [(1, ["B", "8*T"]), (0, [1, "8*B*T"]), (-1, ["B*T", 8]), (3, ["8*B*T", 1])])
def test_a_flatten_has_the_products_of_the_dims_before_and_from_its_axis(axis, dims):
    text = f"""
    < ir_version: 8, opset_import: ["" : 17] >
    g (float[B, T, 8] x) => (float[?, ?] y) {{
        y = Flatten <axis = {axis}> (x)
    }}
    """
    sizes, graph = analysed(text)
    assert sizes.dims(tensor(graph, "y")) == dims


def test_a_length_flattened_with_the_features_is_solved_by_the_reshape_after():
    """`h.flatten(1).view(B, int(T), 8)` traced at T = 12: [B, 8 T] reshaped to [B, 12, 8] holds at T = 12."""
    text = """
    < ir_version: 8, opset_import: ["" : 17] >
    g (float[B, T, 8] x) => (float[?, ?, ?] y) {
        h = Flatten <axis = 1> (x)
        shape = Shape(x)
        zero = Constant <value = int64 {0}> ()
        b = Gather <axis = 0> (shape, zero)
        axes = Constant <value = int64[1] {0}> ()
        b1 = Unsqueeze(b, axes)
        rest = Constant <value = int64[2] {12, 8}> ()
        target = Concat <axis = 0> (b1, rest)
        y = Reshape(h, target)
    }
    """
    sizes, _ = analysed(text)
    (baked,) = list(baked_reshapes(sizes))
    assert (str(baked.solution.symbol), baked.solution.value) == ("T", 12)
    assert [(e.index, e.value, str(e.expr)) for e in baked.entries] == [(1, 12, "T")]
