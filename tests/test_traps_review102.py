"""Traps from review 102: a uniform constant shrunk as safe where a size gives it too.

GF006 shrinks a constant that is uniform along its baked axes where nothing but a batch's size-free value fits:
zeros or ones along a batch (an RNN's initial state `zeros(L, int(B), H)`). Two readings let a wrong model out with
exit 0, through the constant's data expanded to the traced shape as through a constant met directly:
- a time axis named `batch_frames` was taken for a batch (the name was matched anywhere), so a cutoff mask
  `arange(T) < 20`, all ones at the export length 7, was shrunk to ones at every length; a name that also names
  a length is no batch now (`batch_size`, `minibatch`, `input_batch`, `B`, `bsz` still are: helper 105);
- `full((1, B, H), 1 / (B - 1))` at B = 2 holds 1.0, which counted as size-free; a float 1 along an axis exported
  at 2 is what 1/(n-1), n-1 and n/2 give there too, and is doubted now. Zeros stay a batch's initial state.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from fixtures.baked_heads import repair  # noqa: E402  (imports torch)

pytestmark = pytest.mark.torch


class CutoffMask(torch.nn.Module):
    """Frames past the 20th zeroed: a mask all ones at the export length, expanded to the traced shape."""

    def forward(self, x):
        length = int(x.shape[1])
        mask = (torch.arange(length) < 20).float().view(1, length, 1).expand(x.shape[0], x.shape[1], x.shape[2])
        return x * mask


class SizedState(torch.nn.Module):
    """A GRU started from `1 / (B - 1)`: 1.0 at the export batch of 2, 0.5 at 3."""

    def __init__(self, fill=None):
        super().__init__()
        torch.manual_seed(0)
        self.fill = fill
        self.gru = torch.nn.GRU(4, 8, batch_first=True)

    def forward(self, x):
        batch = int(x.shape[0])
        value = 1.0 / (batch - 1) if self.fill is None else self.fill
        return self.gru(x, torch.full((1, batch, 8), value))[0]


def _export(module, path, axes):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, 7, 4),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": axes, "y": axes})
    return path


@pytest.mark.parametrize(("module", "axes"), [
    (CutoffMask(), {0: "N", 1: "batch_frames"}),  # a length whose name holds the word batch
    (SizedState(), {0: "batch", 1: "T"}),  # a value of the batch size that is 1.0 at 2
], ids=["batch_frames", "one_over_b_minus_1"])
def test_a_uniform_constant_a_size_gives_is_not_shrunk(tmp_path, module, axes):
    done, out = repair(_export(module, tmp_path / "m.onnx", axes))
    assert done.exit_code == 1 and not out.exists(), done.output
    assert "GF006" in done.output, done.output


@pytest.mark.parametrize("name", ["batch_size", "bsz", "B", "dynamic_batch", "minibatch", "input_batch"])
def test_an_initial_state_of_zeros_along_a_batch_named_so_is_repaired(tmp_path, name):
    import onnxruntime as ort

    module = SizedState(fill=0.0).eval()
    done, out = repair(_export(module, tmp_path / "m.onnx", {0: name, 1: "T"}))
    assert done.exit_code == 0 and "GF006" in done.output, done.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch, length in ((1, 5), (3, 9), (5, 12)):
        x = torch.randn(batch, length, 4)
        with torch.no_grad():
            np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], module(x).numpy(), rtol=1e-4,
                                       atol=1e-5)
