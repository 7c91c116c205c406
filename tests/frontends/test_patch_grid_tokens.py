"""A token count baked as a grid of patches (helper 109): transformers' SigLIP vision model with
`interpolate_pos_encoding=True`, exported with TorchScript and dynamic height and width. Its pooling head is an
`nn.MultiheadAttention`, whose TorchScript export bakes the number of tokens into `Reshape(q, [20, 2 * B, 16])`:
20 patches of 8 at 32 x 40, floor(H / 8) * floor(W / 8). One equation cannot pin H and W, but the Reshape needs
only their product, which the graph carries (the patch embedding's tokens): the entry is that count at every size,
rebuilt from Shape ops, on request: a model keeping 20 slots or a fixed grid whatever its input (a pad, a pool or a
repeat sized in Python on the way) can leave the same graph (helper 112), so the fix is unsafe and the finding says
why. A rule crashed on this graph before (a shape entry left a Python int by a broadcast)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import run
from fixtures.library_models import import_timm, import_transformers

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]


class Pooled(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(pixel_values=x, interpolate_pos_encoding=True)
        return out.last_hidden_state, out.pooler_output


def siglip() -> torch.nn.Module:
    transformers = import_transformers()
    torch.manual_seed(0)
    config = transformers.SiglipVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=64, image_size=32, patch_size=8)
    return Pooled(transformers.SiglipVisionModel(config)).eval()


def test_siglip_s_pooling_head_baked_at_its_patch_grid_is_repaired(tmp_path):
    module, path = siglip(), tmp_path / "siglip.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 3, 32, 40),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["tokens", "pooled"],
                          dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}, "tokens": {0: "batch"},
                                        "pooled": {0: "batch"}})
    refused = subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(tmp_path / "no.onnx")],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "token count of a grid" in refused.stdout, refused.stdout + refused.stderr
    done = subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(tmp_path / "fixed.onnx"),
                           "--unsafe-fixes"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("applied GF004") == 2 and "floor(height/8)*floor(width/8)" in done.stdout, done.stdout
    for shape in [(1, 3, 32, 40), (2, 3, 48, 56), (1, 3, 80, 96)]:  # batch 1, another grid, a larger one
        x = torch.randn(*shape)
        got = run(str(tmp_path / "fixed.onnx"), {"x": x.numpy()})
        with torch.no_grad():
            want = module(x)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-3, atol=1e-4)


def test_mobilevit_v2_s_channels_equal_to_a_quarter_of_its_grid_are_not_taken_for_it(tmp_path):
    """timm's MobileViT-v2 unfolds a 16 x 16 map at 128 x 128 into `[B, 64, 4, 64]`-like patches: its 64 channels
    equal the grid's 256 tokens / 4 there. Read as a grid's token count, the solve took the channels for
    `floor(...) * floor(...) / 4` (helper 111: a (4, 1000) output at 256 x 256 had it been written). A token count
    is an entry as a whole, or none; the unfold's patch counts are not determined by the graph (exit 1)."""
    timm = import_timm()
    torch.manual_seed(0)
    module, path = timm.create_model("mobilevitv2_050", pretrained=False).eval(), tmp_path / "mvit2.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, 3, 128, 128),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 2: "H", 3: "W"}, "y": {0: "batch"}})
    said = subprocess.run([sys.executable, "-m", "graphfix", "diagnose", str(path), "--static"], capture_output=True,
                          text=True, timeout=300).stdout
    assert "(safe)" not in said and "floor(H/8 - 1/8) + 1)/4" not in said, said
    done = subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(tmp_path / "f.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and ": unchanged" in done.stdout, done.stdout  # its own graph, as it came
