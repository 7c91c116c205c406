"""GF003 broadcast-mismatch on graphs written in ONNX text: the seed's `Where(mask[B,T], v, x[B,T,C])`, baked
sizes and other mismatches, a mask that fits the data in more than one way, healthy broadcasts, and the bound on
the work of many operands. (PyTorch exports: test_gf003_index_put.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import op_types, parse, run
from fixtures.broadcast_repairs import gf003, repaired, unsqueeze_axes

import graphfix
from graphfix.analysis.broadcast import MAX_NODE_SHAPES, operand_pairs

# -- the seed's graph, hand-built ---------------------------------------------------------------------------------

SEED = """< ir_version: 8, opset_import: ["" : {opset}] >
g (bool[{mask}] mask, float[{x}] x) => (float[{x}] y) {{
    zero = Constant <value = float {{0}}> ()
    y = Where(mask, zero, x)
}}"""


@pytest.mark.parametrize("mask, x, safe", [
    ("B,T", "B,T,768", True),  # dynamic batch and time
    ("1,T", "1,T,768", True),  # the seed: Condition Shape {1,100}, Y Shape {1,100,768}
    ("1,100", "1,100,768", False),  # static: equal only as export-time sizes
])
@pytest.mark.parametrize("opset", [12, 17])
def test_seed_where_graph(mask, x, safe, opset):
    model = parse(SEED.format(mask=mask, x=x, opset=opset))
    mask_np = np.random.default_rng(0).random((1, 100)) < 0.3
    x_np = np.random.default_rng(1).standard_normal((1, 100, 768)).astype(np.float32)
    with pytest.raises(Exception, match=r"100 by 768|Incompatible dimensions"):  # static: at load time
        run(model, {"mask": mask_np, "x": x_np})
    (finding,) = gf003(model)
    assert finding.fix.safety is (graphfix.core.rule.Safety.SAFE if safe else graphfix.core.rule.Safety.UNSAFE)
    if not safe:
        assert "static sizes" in finding.fix.reason
        assert not graphfix.repair(model, only=("GF003",), validate=False, simplify=False).applied  # needs --unsafe
    result = repaired(model, unsafe=not safe)
    assert op_types(result.model) == ["Constant", "Unsqueeze", "Where"]
    assert unsqueeze_axes(result.model) == [2]
    (got,) = run(result.model, {"mask": mask_np, "x": x_np})
    np.testing.assert_array_equal(got, np.where(mask_np[..., None], 0, x_np))


# -- other mismatches: reported, fixed only when provable ------------------------------------------------------


def test_trace_baked_table_is_reported_for_gf004():
    model = parse("""< ir_version: 8, opset_import: ["" : 17] >
        g (float[B,T,8] x) => (float[B,T,8] y) <float[1,6,8] pos = {""" + ",".join(["0.5"] * 48) + """}> {
            y = Add(x, pos)
        }""")
    (finding,) = gf003(model)
    assert "static size 6 on axis 1" in finding.message and "dynamic dim T" in finding.message
    assert "GF006" in finding.message and finding.fix is None
    run(model, {"x": np.zeros((2, 6, 8), np.float32)})  # only the export length runs
    with pytest.raises(Exception, match=r"6 by 9|9 by 6"):
        run(model, {"x": np.zeros((2, 9, 8), np.float32)})


@pytest.mark.parametrize("text, words", [
    ("g (float[211] a, float[421] b) => (float[?] y) { y = Add(a, b) }", "fails at every input size"),
    ("g (float[B,T] a, float[T,S] b) => (float[?,?] y) { y = Mul(a, b) }", "B equals T"),
])
def test_unfixable_mismatch_is_reported(text, words):
    model = parse('< ir_version: 8, opset_import: ["" : 17] >\n' + text)
    (finding,) = gf003(model)
    assert words in finding.message and finding.fix is None


def test_leading_match_on_other_ops_is_an_unsafe_guess():
    model = parse("""< ir_version: 8, opset_import: ["" : 17] >
        g (float[B,T] m, float[B,T,8] x) => (float[B,T,8] y) { y = Mul(m, x) }""")
    (finding,) = gf003(model)
    assert finding.fix.safety is graphfix.core.rule.Safety.UNSAFE and "guess" in finding.fix.reason
    m, x = np.ones((2, 3), np.float32), np.ones((2, 3, 8), np.float32)
    (got,) = run(repaired(model, unsafe=True).model, {"m": m, "x": x})
    np.testing.assert_array_equal(got, m[..., None] * x)


OK_CASES = [  # (inputs, body): healthy broadcasting that must never fire; outputs are float unless noted
    ("float[B,1,T] a, float[B,4,T] b", "y = Add(a, b)"),
    ("float a, float[B,T,8] b", "y = Mul(a, b)"),
    ("float[8] a, float[B,T,8] b", "y = Add(a, b)"),
    ("float[B,T,1] a, float[B,T,8] b", "y = Div(b, a)"),
    ("float[T,1] a, float[1,T] b", "y = Sub(a, b)"),
    ("float[4,1,1] a, float[B,4,T,S] b", "y = Add(a, b)"),
    ("float[B,S] a, float[B,T] b", "y = Add(a, b)"),  # may be equal at run time: rejected, not reported
    ("float[B,T,8] a, float[B,T,8] b", "y = Pow(a, b)"),
    ("float[8] a, float[B,T,8] b, float[1] c", "y = Sum(a, b, c)"),
    ("bool[B,1,1,T] m, float[B,4,T,T] s", "ninf = Constant <value = float {-1e9}> ()\n y = Where(m, ninf, s)"),
    ("bool[B,T,8] m, float a, float[8] b", "y = Where(m, a, b)"),
    ("float[B,T,8] a, int64[2] shape", "r = Reshape(a, shape)\n y = Mul(r, r)"),
    ("float[B,T,8] a, float[8] b", "s = Shape(a)\n z = ConstantOfShape(s)\n y = Add(z, b)"),
    ("int64[B,T] a, int64[B,T] b", "y = Equal(a, b)"),
]


@pytest.mark.parametrize("inputs, body", OK_CASES, ids=[c[1].split("\n")[-1].strip() for c in OK_CASES])
def test_healthy_broadcasting_does_not_fire(inputs, body):
    out = "bool" if "Equal" in body else "float"
    model = parse(f'< ir_version: 8, opset_import: ["" : 17] >\ng ({inputs}) => ({out}[?] y) {{ {body} }}')
    assert not gf003(model)


# -- a mask whose dims fit the data in more than one way: ambiguous, never SAFE ---------------------------------

KEY_PADDING = """< ir_version: 8, opset_import: ["" : {opset}] >
g (bool[B,T] mask, float[B,T,T] scores) => (float[B,T,T] y) {{
    ninf = Constant <value = float {{-1e9}}> ()
    y = Where(mask, ninf, scores)
}}"""


@pytest.mark.parametrize("opset", [12, 17])
def test_key_padding_mask_is_ambiguous_and_its_fix_keeps_batch_1(opset):
    model = parse(KEY_PADDING.format(opset=opset))
    (finding,) = gf003(model)
    assert finding.fix.safety is graphfix.core.rule.Safety.UNSAFE
    assert "more than one way" in finding.message and "(0, 1) or (0, 2)" in finding.message
    assert "ambiguous" in finding.fix.reason and "B = 1" in finding.fix.reason
    assert "mask[:, None, :]" in finding.hint
    assert not graphfix.repair(model, only=("GF003",), validate=False, simplify=False).applied  # needs --unsafe
    result = repaired(model, unsafe=True)
    assert unsqueeze_axes(result.model) == [1]  # keys, as the original masks them at batch 1
    assert not gf003(result.model)
    rng = np.random.default_rng(0)
    for b, t in [(1, 5), (3, 4), (2, 6)]:
        mask, scores = rng.random((b, t)) < 0.4, rng.standard_normal((b, t, t)).astype(np.float32)
        (got,) = run(result.model, {"mask": mask, "scores": scores})
        np.testing.assert_array_equal(got, np.where(mask[:, None, :], np.float32(-1e9), scores))
        if b == 1:
            np.testing.assert_array_equal(got, run(model, {"mask": mask, "scores": scores})[0])


@pytest.mark.parametrize("mask, data", [("B,T", "B,T,C"), ("B,T", "B,T,T,C")])
def test_alignment_decides_between_leading_and_ambiguous(mask, data):
    # [B, T] fits [B, T, C] one way (SAFE, trailing unsqueeze); [B, T, T, C] two ways (UNSAFE)
    model = parse(SEED.format(mask=mask, x=data, opset=17))
    (finding,) = gf003(model)
    unique = data.count("T") == 1
    assert finding.fix.safety is (graphfix.core.rule.Safety.SAFE if unique else graphfix.core.rule.Safety.UNSAFE)
    assert ("more than one way" in finding.message) is not unique


# -- bounded work: broadcasting ops of many operands --------------------------------------------------------------


def gf003_report(model):
    from graphfix.api import load
    from graphfix.core.registry import select_rules
    from graphfix.core.rule import RuleOptions
    from graphfix.pipeline.diagnose import diagnose_loaded

    return diagnose_loaded(load(model, unexpanded=True), select_rules(("GF003",), ()), RuleOptions(static=True))


def test_operands_of_one_shape_are_paired_once():
    """`Sum(x, x, ..., x)` pairs nothing, and one odd operand among a thousand pairs once: a 12 KB Sum of one
    tensor 8000 times cost minutes and gigabytes when every operand was paired with every other one."""
    inputs = frozenset({"B"})
    assert operand_pairs([["B", 4]] * 1000, inputs) == []
    assert [p[:3] for p in operand_pairs([["B", 4]] * 500 + [[8]] + [["B", 4]] * 500, inputs)] == [(0, 500, 1)]


def test_a_node_of_too_many_operand_shapes_is_rejected_not_reported():
    """Past MAX_NODE_SHAPES distinct operand shapes the node is named in the rejections, with no finding."""
    n = MAX_NODE_SHAPES + 1
    args = ", ".join(f"float[{', '.join(['1'] * k + ['B'])}] a{k}" for k in range(n))
    model = parse(f'< ir_version: 8, opset_import: ["" : 17] >\ng ({args}) => (float[?] y) '
                  f'{{ y = Sum({", ".join(f"a{k}" for k in range(n))}) }}')
    report = gf003_report(model)
    assert not [f for f in report.findings if f.rule == "GF003"]
    assert any(f"more than the {MAX_NODE_SHAPES}" in r.reason for r in report.rejections), report.rejections
