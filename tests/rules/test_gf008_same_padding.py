"""GF008 on Pads by uneven constants before a strided window that TF-style 'SAME' padding gives at some lengths only.
transformers' MobileNetV2 (`tf_padding`, the default) computes its pads from `int(x.shape[-2])`, so the TorchScript
export keeps the (0, 1) of an even export size and runs wrong at odd sizes, silently; with its output's axes named
apart it was written with exit 0 and nothing said (stop 56's note). It also pads its 1 x 1 Convs by zeros, which no
model that writes its pads does: an error, and `repair` writes nothing (test_transformers_sweep.py). Stable
Diffusion's VAE downsampler (and transformers' EfficientNet stem) pads (0, 1) at every size and leaves the graph of
such a Pad alone: a warning naming both readings, and written."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run

import graphfix
from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch]
F = torch.nn.functional


def gf008(path, **options):
    return [f for f in graphfix.diagnose(str(path), static=True, **options) if f.rule == "GF008"]


def repair(path, out):
    return CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])


def export(module, path, size=(2, 3, 64, 96)):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(*size),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b", 2: "h", 3: "w"},
                                                            "y": {0: "b", 2: "out_h", 3: "out_w"}})
    return path


class Downsample(torch.nn.Module):
    """Stable Diffusion's VAE downsampler: a (0, 1) pad at every size, then a 3 x 3 stride-2 Conv."""

    def __init__(self, pads=(0, 1, 0, 1), kernel=3, stride=2):
        super().__init__()
        self.pads, self.conv = pads, torch.nn.Conv2d(3, 8, kernel, stride=stride)

    def forward(self, x):
        return self.conv(F.pad(x, self.pads))


def test_a_pad_of_the_model_s_own_leaves_the_same_graph_and_the_same_warning(tmp_path):
    module = Downsample()
    path = export(module, tmp_path / "vae_down.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, 33, 47)).astype(np.float32)
    with torch.no_grad():  # healthy: the export follows PyTorch at odd sizes
        np.testing.assert_allclose(run(str(path), {"x": x})[0], module(torch.from_numpy(x)).numpy(), atol=1e-5)
    found = gf008(path)
    assert [f.severity.value for f in found] == ["warning"] and "(0, 1)" in found[0].message, found
    assert "Stable Diffusion" in found[0].hint
    done = repair(path, tmp_path / "out.onnx")
    assert done.exit_code == 0 and "warning GF008" in done.output, done.output


@pytest.mark.parametrize("pads, kernel, stride", [
    ((1, 1, 1, 1), 3, 2),  # even amounts: a plain padding=1 (an odd export size's 'SAME' too)
    ((0, 1, 0, 1), 3, 1),  # no stride: 'SAME' pads the same at every length
    ((0, 1, 0, 1), 1, 2),  # a 1 x 1 window: 'SAME' pads nothing anywhere, and (0, 1) is no residue's
    ((1, 2, 1, 2), 3, 2),  # (1, 2) is no residue's 'SAME' for a 3 x 3 window
], ids=["even", "stride-1", "kernel-1", "no-residue"])
def test_pads_that_are_no_residue_s_same_padding_are_quiet(tmp_path, pads, kernel, stride):
    assert gf008(export(Downsample(pads, kernel, stride), tmp_path / "m.onnx")) == []


def test_an_export_size_where_the_pads_are_not_same_tells_it_apart(tmp_path):
    """Given the export size (odd: 'SAME' pads (1, 1) there), a (0, 1) pad is not the export size's 'SAME'."""
    path = export(Downsample(), tmp_path / "m.onnx", size=(2, 3, 65, 97))
    assert len(gf008(path)) == 1
    assert gf008(path, trace_shapes={"x": (2, 3, 65, 97)}) == []
    assert len(gf008(path, trace_shapes={"x": (2, 3, 64, 96)})) == 1


def test_a_pad_by_zeros_alone_is_no_finding(tmp_path):
    assert gf008(export(Downsample((0, 0, 0, 0), 1, 1), tmp_path / "m.onnx")) == []
