"""GF009 on an onnxruntime failure: a Gather out of bounds at a constant index is a step of an unrolled loop (or a
model's own position), and the finding carries GF009's hint, not onnxruntime's words alone (helper 114)."""

from __future__ import annotations

import warnings

import pytest

import graphfix

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

FEATURES = 6


class PerSampleStatistics(torch.nn.Module):
    """speechbrain's StatisticsPooling spelled out: a Python loop over the batch, each sample's mean and spread."""

    def forward(self, x):
        return torch.stack([torch.cat([x[i].mean(0), x[i].std(0)]) for i in range(x.shape[0])])


def test_a_loop_over_the_batch_unrolled_at_export_says_so_where_it_fails(tmp_path):
    """Two samples are below GF009's four steps (`x[0] + x[1]` is as often a model's own), so the static rule is
    quiet; at batch 1 the copy for sample 1 reads past the batch. That failure is GF009's now, with its hint
    (helper 114: speechbrain's Xvector with lengths got onnxruntime's words alone), and still an error."""
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(PerSampleStatistics(), (torch.randn(2, 10, FEATURES),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B"}})
    [found] = [f for f in graphfix.diagnose(str(path)) if f.severity.value == "error" and "fails at" in f.message]
    assert found.rule == "GF009" and "out of data bounds" in found.message, found
    assert "range(x.shape[0])" in found.hint and "unrolled" in found.hint, found.hint
