"""GF006 after GF004 in one repair (review, helper 29): nn.MultiheadAttention under the TorchScript exporter bakes
the keys' length (GF004 rebuilds it) and a sliding-window mask built with int(T) is folded (GF006 rebuilds it from
the scores' dims). In one round GF006 read the keys' axis as the fixed 12 it was before GF004's fix, its mask
stayed 12 wide, and the proof refused the repair. A fix downstream of another rule's fix now waits a round
(graphfix.pipeline.engine)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import run

import graphfix

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch]


def test_a_sliding_window_given_to_multihead_attention_is_rebuilt_after_the_keys_length(tmp_path):
    """nn.MultiheadAttention under the TorchScript exporter bakes the keys' length (GF004) and the window mask is
    built with int(T) (GF006). In one round GF006 read the keys' axis as the fixed 12 it was before GF004's fix,
    and its mask stayed 12 wide: the proof refused it. A fix downstream of another rule's waits a round."""
    class WindowedAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = torch.nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            t = int(x.shape[1])
            i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
            mask = ~((i >= j) & (i - j < 3))
            return self.attention(x, x, x, attn_mask=mask, need_weights=False)[0]

    torch.manual_seed(0)
    module, path = WindowedAttention().eval(), tmp_path / "windowed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 12, 16),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}}, dynamo=False)
    # the window is also a strided sparse pattern whose stride lies past 12 (GF006's fix is unsafe): asked for here
    result = graphfix.repair(str(path), unsafe_fixes=True)
    assert result.status == "repaired", result.error
    assert sorted({a.rule for a in result.applied}) == ["GF004", "GF006"]
    for batch, time in ((1, 7), (2, 12), (3, 30)):
        x = torch.randn(batch, time, 16)
        with torch.no_grad():
            want = module(x).numpy()
        np.testing.assert_allclose(run(result.model, {"x": x.numpy()})[0], want, rtol=1e-4, atol=1e-5)
