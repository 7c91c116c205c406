"""GF004 with a size given by --trace-shape (helper 103): a fixed element count is baked whichever entry the given
size matches, and a failure onnxruntime confirms is an error; neither turns into `diagnose` exit 0."""

from __future__ import annotations

import warnings

import onnx
import torch
from torch import nn

import graphfix
from graphfix.core.rule import Safety


def gf004(findings):
    return [f for f in findings if f.rule == "GF004"]


class TokensBack(nn.Module):
    """Tokens back to a map with `reshape(int(B), int(C), int(h), int(w))` (a hybrid conv and attention model)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, 32, 8, 8)
        self.mix = nn.Linear(32, 32)

    def forward(self, x):
        f = self.embed(x)
        batch, channels, h, w = f.shape
        t = self.mix(f.flatten(2).transpose(1, 2))
        return t.transpose(1, 2).reshape(int(batch), int(channels), int(h), int(w))


def test_a_fixed_element_count_is_baked_whichever_entry_a_given_size_matches(tmp_path):
    """Where the analysis cannot tell the tokens' count from h and w, the given batch matches entry 0 only; that
    guess stays unsafe, but a target with no -1 and no 0 over an input that varies is baked for sure: an error,
    with --trace-shape as without it (it was a warning, `diagnose` exit 0)."""
    path = tmp_path / "tokens_back.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TokensBack().eval(), (torch.randn(2, 3, 64, 96),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}, "y": {0: "batch"}})
    for trace in (None, {"x": (2, 3, 64, 96)}):
        (finding,) = gf004(graphfix.diagnose(str(path), static=True, trace_shapes=trace))
        assert finding.severity.value == "error", finding.message
        assert finding.fix is None or finding.fix.safety is Safety.UNSAFE, finding.fix


def test_a_failure_onnxruntime_confirms_makes_a_warning_an_error():
    """`x.reshape(2, -1, 5)` exported at batch 2: the 2 may be the model's own (a warning from the graph alone),
    but the model fails at odd batches, which its declaration allows: the confirmed finding is an error."""
    model = onnx.parser.parse_model("""<ir_version: 10, opset_import: ["" : 17]>
g (float[B, 5] x) => (float[?, ?, ?] y) <int64[3] shape = {2, -1, 5}> { [reshape] y = Reshape(x, shape) }""")
    (suspected,) = gf004(graphfix.diagnose(model, static=True, trace_shapes={"x": (2, 5)}))
    assert suspected.severity.value == "warning", suspected.message
    (confirmed,) = gf004(graphfix.diagnose(model, trace_shapes={"x": (2, 5)}))
    assert confirmed.severity.value == "error" and "Confirmed by onnxruntime" in confirmed.message, confirmed.message
