"""transformers' DINOv2 (#22, "DINOv2's `int(H) // P`"): it interpolates its position table to the image's patch
grid. Random weights, a small config, no download."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import run
from fixtures.library_models import PixelOutput, import_transformers

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]


def repair(path, out):
    return subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_dinov2_s_position_grid_follows_the_image_and_is_written(tmp_path, dynamo):
    """DINOv2 interpolates its position table to `height // patch_size` patches: once read through `int()` (a grid
    baked at the export size, #22), transformers now keeps it a traced size (`torch_int`). Healthy under both
    exporters: no error, `repair` writes it as it came, and it matches PyTorch at other images, batch 1 and larger."""
    tf = import_transformers()
    torch.manual_seed(0)
    config = tf.Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                             image_size=28, patch_size=14)
    module, path = PixelOutput(tf.Dinov2Model(config)).eval(), tmp_path / "dinov2.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 3, 56, 84),), str(path), dynamo=dynamo, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b", 1: "n"}})
    done = repair(path, tmp_path / "out.onnx")
    assert done.returncode == 0 and "unchanged" in done.stdout, done.stdout + done.stderr
    for batch, height, width in [(1, 42, 70), (3, 98, 56), (1, 70, 70)]:
        x = np.random.default_rng(height).standard_normal((batch, 3, height, width)).astype(np.float32)
        got, = run(str(tmp_path / "out.onnx"), {"x": x})
        with torch.no_grad():
            np.testing.assert_allclose(got, module(torch.from_numpy(x)).numpy(), rtol=1e-3, atol=1e-4)
