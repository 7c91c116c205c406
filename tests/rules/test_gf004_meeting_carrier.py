"""A held entry is rebuilt from the operand that meets it, not from any tensor whose dim the size analysis names
alike (helper 134): `cat([y + x, e.expand(int(B), int(T), 4)], -1)`, x of [B, T, 8] and y of [By, S, 8] that
broadcasts against it. The analysis ties By to B and S to T (where both run, they are equal or one is 1) and
names the sum's dims after y's. The parameter e has no tensor upstream, so the rebuilt entries were read from the
first graph input with those names, y: written with exit 0, the model failed where S = 1 or By = 1, the export
size among them, where the original and PyTorch run. The Concat's other operand, `y + x`, has the size the entry
must equal wherever the model runs; a graph input whose dim a broadcast meets with another size is no carrier."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class Tagged(torch.nn.Module):
    def __init__(self, tag_second):
        super().__init__()
        torch.manual_seed(0)
        self.e, self.tag_second = torch.nn.Parameter(torch.randn(1, 1, 4)), tag_second

    def forward(self, x, y):
        tag = self.e.expand(int(x.shape[0]), int(x.shape[1]), 4)
        both = y + x
        return torch.cat([tag, both[..., :4] * tag], -1) if self.tag_second else torch.cat([both, tag], -1)


def _repair(tmp_path, module, *given):
    path, out = tmp_path / "m.onnx", tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, 5, 8), torch.randn(2, 5, 8)), str(path), dynamo=False,
                          opset_version=17, input_names=["x", "y"], output_names=["out"],
                          dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "By", 1: "S"}, "out": {0: "B", 1: "T"}})
    return CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), *given]), out


@pytest.mark.parametrize("given", [(), ("--trace-shape", "x=2x5x8", "--trace-shape", "y=2x5x8")],
                         ids=["export-solved", "export-given"])
def test_the_entry_follows_the_operand_the_concat_meets(tmp_path, given):
    """With the export size given, the proof tries the batch on the original: copies of x's sample beside y's own
    samples mixed them (helper 138: refused, "the original mixes the samples along 'B'"); y's batch, which the
    model ties to x's, moves with it."""
    module = Tagged(tag_second=False)
    done, out = _repair(tmp_path, module, *given)
    assert done.exit_code == 0 and "entry 1 of Expand" in done.output, done.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch, length, y_batch, y_length in [(2, 5, 2, 1), (3, 9, 3, 1), (4, 7, 1, 7), (1, 3, 1, 3), (3, 9, 3, 9)]:
        x, y = torch.randn(batch, length, 8), torch.randn(y_batch, y_length, 8)
        with torch.no_grad():
            expected = module(x, y).numpy()
        np.testing.assert_allclose(session.run(None, {"x": x.numpy(), "y": y.numpy()})[0], expected, atol=1e-6)


def test_no_graph_input_a_broadcast_meets_carries_the_entry(tmp_path):
    """The Concat's other operand is computed from the tag itself (no carrier: a cycle), and each input's dims
    meet the other's in `y + x`: nothing that carries B or T for sure, so nothing is written."""
    done, out = _repair(tmp_path, Tagged(tag_second=True))
    assert done.exit_code == 1 and not out.exists(), done.output
