"""GF003 broadcast-mismatch: `x[mask] = v` exported as Where(mask[B,T], v, x[B,T,C]), baked sizes, healthy broadcasts.

What torch 2.13 emits for `x[mask] = 0` (mask [B,T], x [B,T,C]): the TorchScript exporter, opsets 13-20, emits
`Where(Cast(mask), 0, x)`, which onnxruntime rejects at every size, the export size included; the dynamo exporter
(opset 18 and 20; lower opsets go through the version converter) emits NonZero/Expand/ScatterND, which runs and
is correct. `x[mask] = y[mask]` exports as GatherND/ScatterND under both and works. `x[mask] = param[C]` under the
TorchScript exporter becomes a ScatterND whose updates are sliced to the wrong length: a different failure, not a
broadcast, and not this rule's.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import op_types, parse, run

import graphfix
from graphfix.analysis.broadcast import MAX_NODE_SHAPES, operand_pairs

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "hubert_padding_mask"
C = 6
SIZES = [(2, 5), (1, 7), (3, 2), (4, 1)]  # (B, T); T=6 would equal C and hide the bug, so it is avoided


class IndexPutZero(torch.nn.Module):
    def forward(self, x, mask):
        x = x * 2
        x[mask] = 0
        return x


class IndexPutNotMask(torch.nn.Module):  # transformers wav2vec2: hidden_states[~attention_mask] = 0.0
    def forward(self, x, mask):
        x = x * 2
        x[~mask] = 0.0
        return x


class IndexPutBatchMask(torch.nn.Module):  # a [B] mask on [B,T,C]: two trailing axes to add
    def forward(self, x, mask):
        x = x * 2
        x[mask[:, 0]] = 0
        return x


class IndexPutRank4(torch.nn.Module):  # a [B,T] mask on [B,T,C,3]
    def forward(self, x, mask):
        x = x.unsqueeze(-1).expand(-1, -1, -1, 3) * 2
        x[mask] = 0
        return x


class IndexPutTwice(torch.nn.Module):  # the 2nd Where reads the 1st: reported once that one is fixed
    def forward(self, x, mask):
        x = x * 2
        x[mask] = 0
        x[~mask] = 1.0
        return x


class MaskedFill(torch.nn.Module):  # the healthy way to write IndexPutZero
    def forward(self, x, mask):
        return (x * 2).masked_fill(mask.unsqueeze(-1), 0)


def export(module, path, dynamo, opset):
    x, mask = torch.randn(2, 5, C), torch.rand(2, 5) < 0.4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            b, t = torch.export.Dim("B"), torch.export.Dim("T")
            torch.onnx.export(module, (x, mask), str(path), dynamo=True, opset_version=opset, verbose=False,
                              input_names=["x", "mask"], dynamic_shapes={"x": {0: b, 1: t}, "mask": {0: b, 1: t}})
        else:
            torch.onnx.export(module, (x, mask), str(path), dynamo=False, opset_version=opset,
                              input_names=["x", "mask"], output_names=["y"],
                              dynamic_axes={"x": {0: "B", 1: "T"}, "mask": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}})
    return onnx.load(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(module class, 'ts'|'dynamo', opset) -> ModelProto, each exported once."""
    cache = {}
    folder = tmp_path_factory.mktemp("gf003")

    def get(cls, exporter, opset):
        key = (cls, exporter, opset)
        if key not in cache:
            cache[key] = export(cls(), folder / f"{cls.__name__}_{exporter}_{opset}.onnx", exporter == "dynamo", opset)
        return cache[key]

    return get


def gf003(model, **kwargs):
    return [f for f in graphfix.diagnose(model, only=("GF003",), static=True, **kwargs) if f.rule == "GF003"]


def repaired(model, unsafe=False):
    result = graphfix.repair(model, only=("GF003",), validate=False, simplify=False, unsafe_fixes=unsafe)
    onnx.checker.check_model(result.model, full_check=True)
    return result


def unsqueeze_axes(model):
    """The axes of the Unsqueeze GF003 added (an input from opset 13, an attribute before)."""
    node = next(n for n in model.graph.node if n.op_type == "Unsqueeze" and "gf003" in n.name)
    if len(node.input) == 1:
        return list(onnx.helper.get_attribute_value(node.attribute[0]))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return inits[node.input[1]].tolist()


def feeds(b, t, seed=0):
    rng = np.random.default_rng(seed + 10 * b + t)
    return {"x": rng.standard_normal((b, t, C)).astype(np.float32), "mask": rng.random((b, t)) < 0.4}


def assert_matches_torch(model, module, sizes=SIZES):
    for b, t in sizes:
        inputs = feeds(b, t)
        expected = module(torch.from_numpy(inputs["x"]), torch.from_numpy(inputs["mask"])).numpy()
        (got,) = run(model, inputs)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, err_msg=f"at B={b}, T={t}")


# -- the TorchScript export of x[mask] = v: fails in onnxruntime, fires, is repaired ---------------------------


@pytest.mark.parametrize("opset", [13, 17, 20])
def test_ts_index_put_fails_fires_and_is_repaired(exported, opset):
    model = exported(IndexPutZero, "ts", opset)
    assert Counter(op_types(model))["Where"] == 1
    for b, t in SIZES[:3]:  # the original fails everywhere, the export size (2, 5) included
        with pytest.raises(Exception, match="Attempting to broadcast an axis by a dimension other than 1"):
            run(model, feeds(b, t))
    (finding,) = gf003(model)
    assert finding.fix is not None and finding.fix.safety is graphfix.core.rule.Safety.SAFE
    assert list(finding.shapes.values()) == [["B", "T"], [], ["B", "T", C]]
    assert "T with 6" in finding.message and "leading dims" in finding.message
    assert "masked_fill(mask.unsqueeze(-1)" in finding.hint
    result = repaired(model)
    assert [a.rule for a in result.applied] == ["GF003"]
    assert sorted(op_types(result.model)) == ["Cast", "Constant", "Constant", "Mul", "Unsqueeze", "Where"]
    unsq = next(n for n in result.model.graph.node if n.op_type == "Unsqueeze")
    where = next(n for n in result.model.graph.node if n.op_type == "Where")
    assert where.input[0] == unsq.output[0]
    assert not gf003(result.model)
    assert_matches_torch(result.model, IndexPutZero())


@pytest.mark.parametrize("cls, axes", [(IndexPutNotMask, [2]), (IndexPutBatchMask, [1, 2]), (IndexPutRank4, [2, 3])])
def test_ts_index_put_variants_are_repaired(exported, cls, axes):
    model = exported(cls, "ts", 17)
    with pytest.raises(Exception, match="Attempting to broadcast"):
        run(model, feeds(2, 5))
    (finding,) = gf003(model)
    assert finding.fix.safety is graphfix.core.rule.Safety.SAFE
    result = repaired(model)
    assert unsqueeze_axes(result.model) == axes
    assert_matches_torch(result.model, cls())


def test_chained_index_puts_are_repaired_in_two_rounds(exported):
    model = exported(IndexPutTwice, "ts", 17)
    assert [f.nodes for f in gf003(model)] == [["/Where"]]  # the 2nd only shows the 1st's shape artefacts
    result = repaired(model)
    assert sorted(n for a in result.applied for n in a.nodes) == ["/Where", "/Where_1"]
    assert Counter(op_types(result.model))["Unsqueeze"] == 2
    assert_matches_torch(result.model, IndexPutTwice())


# -- healthy exports: must not fire ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, exporter, opset", [
    (MaskedFill, "ts", 13), (MaskedFill, "ts", 17), (MaskedFill, "ts", 20), (MaskedFill, "dynamo", 18),
    (IndexPutZero, "dynamo", 18), (IndexPutZero, "dynamo", 20), (IndexPutRank4, "dynamo", 18),
])
def test_healthy_exports_do_not_fire(exported, cls, exporter, opset):
    model = exported(cls, exporter, opset)
    assert not gf003(model)
    assert_matches_torch(model, cls())


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


class BakedPositions(torch.nn.Module):  # a positional table cut with a Python int (APGCC #22, XLNet #9044)
    def __init__(self):
        super().__init__()
        self.register_buffer("pe", torch.arange(50 * C, dtype=torch.float32).reshape(1, 50, C) / 100)

    def forward(self, x, mask):
        return (x + self.pe[:, : int(x.size(1))]).masked_fill(mask.unsqueeze(-1), 0)


def test_trace_baked_table_from_torch_is_reported(exported):
    model = exported(BakedPositions, "ts", 17)
    (finding,) = gf003(model)
    assert "static size 5 on axis 1" in finding.message and "dynamic dim T" in finding.message
    assert "GF006" in finding.message and "GF006" in finding.hint and finding.fix is None
    assert_matches_torch(model, BakedPositions(), sizes=[(1, 5), (3, 5)])  # the export length runs ...
    with pytest.raises(Exception, match="Attempting to broadcast"):  # ... no other does
        run(model, feeds(2, 7))


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


# -- the HuBERT sample --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hubert():
    spec = importlib.util.spec_from_file_location("hubert_make_model", SAMPLE / "make_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("opset", [13, 17])
def test_hubert_sample_is_repaired(hubert, tmp_path, opset):
    path = tmp_path / "model.onnx"
    module = hubert.build(path, opset=opset)
    model = onnx.load(path)
    (finding,) = gf003(model)
    assert finding.nodes == ["/Where"] and finding.fix.safety is graphfix.core.rule.Safety.SAFE
    result = repaired(model)
    for b, t in [(1, 100), (2, 37), (3, 8)]:  # export size, odd and short lengths
        rng = np.random.default_rng(t)
        features = rng.standard_normal((b, t, hubert.FEATURES)).astype(np.float32)
        lengths = rng.integers(1, t + 1, b)
        mask = np.arange(t)[None, :] >= lengths[:, None]
        with pytest.raises(Exception, match="Attempting to broadcast"):
            run(model, {"features": features, "padding_mask": mask})
        with torch.no_grad():
            expected = module(torch.from_numpy(features), torch.from_numpy(mask)).numpy()
        (got,) = run(result.model, {"features": features, "padding_mask": mask})
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_committed_sample_model_fires():
    model = onnx.load(SAMPLE / "model.onnx")
    assert len(model.SerializeToString()) < 200_000
    (finding,) = gf003(model)
    assert finding.fix.safety is graphfix.core.rule.Safety.SAFE


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
