"""GF004 on a length mask whose batch went through `len()` (#22): speechbrain's `length_to_mask`,
`arange(T).expand(len(lengths), T) < lengths.unsqueeze(1)`, traced at batch 2 bakes the Expand shape `[2, T]`
(the exporter writes it as `Where(Equal([2, T], -1), 1, [2, T])`). The Less right after meets entry 0 with the
batch, which holds at B = 2 only: the entry is the batch, rebuilt from Shape ops. ECAPA-TDNN's attentive pooling
does this (tests/frontends exports the library's own class); here the same idiom in plain torch.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import run

import graphfix
from graphfix.core.rule import Safety

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class MaskedMean(torch.nn.Module):
    """Mean over time under a mask of relative lengths (all ones when none are given), as speechbrain pools."""

    def __init__(self, baked: bool):
        super().__init__()
        self.baked = baked

    def forward(self, x):  # [B, C, T]
        lengths = torch.ones(x.shape[0]) * x.shape[-1]
        batch = len(lengths) if self.baked else lengths.shape[0]
        mask = torch.arange(x.shape[-1], dtype=lengths.dtype).expand(batch, x.shape[-1]) < lengths.unsqueeze(1)
        mask = mask.unsqueeze(1).float()
        return (x * mask).sum(-1) / mask.sum(-1)


def export(module, path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 4, 10),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch", 2: "time"},
                                                                               "y": {0: "batch"}})
    return str(path)


def test_batch_baked_by_len_is_rebuilt_from_the_size_the_broadcast_meets(tmp_path):
    module = MaskedMean(baked=True)
    path = export(module, tmp_path / "mask.onnx")
    with pytest.raises(Exception, match="broadcast"):
        run(path, {"x": np.ones((3, 4, 10), np.float32)})  # the export as it is: batch 2 baked
    (finding,) = [f for f in graphfix.diagnose(path, static=True) if f.rule == "GF004"]
    assert "bakes batch=2" in finding.message and "Less" in finding.message
    assert finding.fix.safety is Safety.SAFE
    result = graphfix.repair(path, output=str(tmp_path / "fixed.onnx"))
    assert result.status == "repaired", result.error
    for shape in ((1, 4, 7), (2, 4, 10), (5, 4, 23)):
        x = np.random.default_rng(shape[0]).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(run(str(tmp_path / "fixed.onnx"), {"x": x})[0],
                                   module(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)


def test_mask_expanded_to_the_traced_batch_is_left_alone(tmp_path):
    path = export(MaskedMean(baked=False), tmp_path / "mask.onnx")
    assert not [f for f in graphfix.diagnose(path, static=True) if f.rule == "GF004"]
    assert graphfix.repair(path, output=str(tmp_path / "out.onnx")).status == "unchanged"
