"""GF003 broadcast-mismatch on PyTorch exports: `x[mask] = v` exported as Where(mask[B,T], v, x[B,T,C]), a table
cut with a Python int, the HuBERT sample, and healthy exports. (Graphs written in ONNX text:
test_gf003_broadcast_mismatch.py.)

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
from conftest import op_types, run
from fixtures.broadcast_repairs import gf003, repaired, unsqueeze_axes

import graphfix

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
