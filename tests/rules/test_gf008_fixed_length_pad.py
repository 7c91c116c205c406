"""GF008's Pads to a fixed length: amounts `c - T` traced from a length computed in Python (found by a sweep of real
front ends, helpers 28 and 29).

transformers' BiT with `global_padding="SAME"` pads each image by `(ceil(H / s) - 1) * s + k - H`, computed with
math.ceil: TorchScript keeps the padded size of the export (69 at 64 x 64), so its feature map is 8 x 8 at every
size, and wrong wherever the image is not 64 x 64. `repair` wrote it unchanged with exit 0 and `diagnose` said "no
findings". Now the size analysis carries F.pad's amounts through the exporter's reordering (Transpose, a reversed
Slice), sees the Pad take H to 69, and the outputs declared dynamic stay fixed because of it: an error, and
`repair` refuses. The same model exported with dynamo is healthy and gets nothing. A Pad to a maximum length on
purpose leaves the same Pad: alone it is a warning, and `repair` writes the model.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import run

import graphfix

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch]


def gf008(path, **options):
    return [f for f in graphfix.diagnose(path, static=True, **options) if f.rule == "GF008"]


def repair(path, out):
    return subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)


def export(module, example, path, axes, dynamo=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {"x": {0: torch.export.Dim("B", min=1, max=8), 2: torch.export.Dim("H", min=32, max=256),
                          3: torch.export.Dim("W", min=32, max=256)}}
            torch.onnx.export(module.eval(), (example,), str(path), dynamo=True, input_names=["x"],
                              output_names=["y"], dynamic_shapes=dims)
        else:
            torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"], dynamic_axes=axes)
    return path


@pytest.fixture(scope="module")
def bit():
    from fixtures.library_models import PixelOutput, import_transformers

    tf = import_transformers()
    torch.manual_seed(0)
    config = tf.BitConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                          global_padding="SAME", layer_type="bottleneck", num_groups=8)
    return PixelOutput(tf.BitModel(config)).eval()


@pytest.mark.slow
def test_bit_same_padding_traced_is_an_error_and_refused(tmp_path, bit):
    path = export(bit, torch.randn(2, 3, 64, 64), tmp_path / "bit.onnx",
                  {"x": {0: "B", 2: "H", 3: "W"}, "y": {0: "B", 2: "h", 3: "w"}})
    x = np.random.default_rng(0).standard_normal((1, 3, 96, 80)).astype(np.float32)
    got, = run(str(path), {"x": x})
    assert got.shape[2:] == (8, 8) and bit(torch.from_numpy(x)).shape[2:] == (12, 10)  # the trap
    found = gf008(path)
    assert [f.severity.value for f in found] == ["error"], found
    assert "takes axis 2 (H) to 69, axis 3 (W) to 69" in found[0].message
    assert "'y' axis 2 (h) stays 8" in found[0].message and "math.ceil" in found[0].hint
    done = repair(path, tmp_path / "out.onnx")
    assert done.returncode == 1 and not (tmp_path / "out.onnx").exists(), done.stdout + done.stderr
    assert "GF008" in done.stdout


@pytest.mark.slow
def test_bit_exported_with_dynamo_is_healthy(tmp_path, bit):
    path = export(bit, torch.randn(2, 3, 64, 64), tmp_path / "bit.onnx", None, dynamo=True)
    assert gf008(path) == []


class PadToMax(torch.nn.Module):
    """Pads the time axis to 64 on purpose (`64 - T` from the traced size), then convolves and pools: healthy for
    every T up to 64."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.nn.functional.pad(x, (0, 64 - x.shape[2]))).amax(2)


def test_a_pad_to_a_maximum_is_a_warning_and_written(tmp_path):
    module = PadToMax().eval()
    torch.manual_seed(0)
    path = export(module, torch.randn(2, 4, 37), tmp_path / "padmax.onnx", {"x": {0: "B", 2: "T"}, "y": {0: "B"}})
    found = gf008(path)
    assert [f.severity.value for f in found] == ["warning"] and "takes axis 2 (T) to 64" in found[0].message
    out = tmp_path / "out.onnx"
    done = repair(path, out)
    assert done.returncode == 0, done.stdout + done.stderr
    for batch, length in ((1, 9), (3, 50)):
        x = np.random.default_rng(length).standard_normal((batch, 4, length)).astype(np.float32)
        got, = run(str(out), {"x": x})
        np.testing.assert_allclose(got, module(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


class PadToMaxTwoOutputs(torch.nn.Module):
    """Pads to 64 on purpose and cuts back to T; a second output is expanded to 4 rows (fixed by the Expand, not by
    the Pad), declared dynamic all the same."""

    def __init__(self):
        super().__init__()
        self.pos, self.lin = torch.nn.Parameter(torch.randn(1, 64, 16)), torch.nn.Linear(16, 16)

    def forward(self, x):
        t = x.shape[1]
        y = self.lin(torch.nn.functional.pad(x, (0, 0, 0, 64 - t)) + self.pos).cumsum(1)
        return y[:, :t], y.mean(1, keepdim=True).expand(-1, 4, -1)


def export_two_outputs(path, z_axes):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(PadToMaxTwoOutputs().eval(), (torch.randn(2, 20, 16),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y", "z"],
                          dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}, "z": z_axes})
    return path


def test_an_output_fixed_by_something_else_is_not_the_pads_doing(tmp_path):
    """Found by review (helper 31): the finding was an error because some output declared dynamic stayed fixed
    downstream of the Pad, though an Expand fixed it. With the Pad's amounts unknown, the analysis still finds it
    fixed: not the Pad's doing, so the Pad is a warning."""
    found = gf008(export_two_outputs(tmp_path / "two.onnx", {0: "B", 1: "K"}))
    assert [f.severity.value for f in found] == ["warning"], found


def test_a_pad_to_a_maximum_cut_back_to_t_is_refused_past_it_and_says_why(tmp_path):
    """The same graph as a traced math.ceil(T / k) * k: past 64 its output stops at 64 where it declares T, as the
    PyTorch module's does. graphfix cannot tell the two apart, so it refuses (exit 1, written unchanged), and the
    findings name both readings."""
    path = export_two_outputs(tmp_path / "cut.onnx", {0: "B"})
    found = {f.rule: f for f in graphfix.diagnose(path)}
    assert found["GF008"].severity.value == "warning" and "a pad to a maximum" in found["GF008"].message
    assert "output 'y' dim 1 is 64" in found["GF000"].message and "pad to a maximum" in found["GF000"].hint
    assert repair(path, tmp_path / "out.onnx").returncode == 1
