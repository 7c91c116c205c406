"""GF004's rebuild of a baked token count where an op before it does nothing by its constants (helper 110).

`nn.MultiheadAttention` under the TorchScript exporter bakes its query length: `Reshape(q, [20, B * heads, d])`.
Where the tokens come straight from a patch embedding, 20 is their count, floor(H/8) * floor(W/8), and the rebuild
is determined (the control below). But a model that pads its tokens to 20 fixed slots with a Python-int amount
(`F.pad(t, (0, 0, 0, 20 - int(n)))`), or pools its map to a fixed 4 x 5 grid with a Python-int kernel, traced
where that amount is 0 or that kernel 1 x 1, leaves the same Reshape after a Pad by zeros or a 1 x 1 pool: the 20
is then the model's own, PyTorch keeps 20 tokens at every size, and the rebuild gave 16 and 180 (SAFE, exit 0).
Such an op is a trace's mark; the rebuild is unsafe there, and repair writes nothing by default."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import run

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional
pytestmark = [pytest.mark.torch]

CHANNELS = 16


class PaddedSlots(nn.Module):
    """Patch tokens padded to 20 slots: an all-zero Pad at the 32 x 40 export (4 x 5 patches)."""

    def __init__(self):
        super().__init__()
        self.patch, self.mha = nn.Conv2d(3, CHANNELS, 8, 8), nn.MultiheadAttention(CHANNELS, 2)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = F.pad(tokens, (0, 0, 0, 20 - int(tokens.shape[1]))).transpose(0, 1)
        return self.mha(tokens, tokens, tokens)[0].transpose(0, 1)


class FixedGrid(nn.Module):
    """A 4 x 5 grid pooled with a Python-int kernel: 1 x 1 at the export."""

    def __init__(self):
        super().__init__()
        self.patch, self.mha = nn.Conv2d(3, CHANNELS, 8, 8), nn.MultiheadAttention(CHANNELS, 2)

    def forward(self, x):
        grid = self.patch(x)
        grid = F.avg_pool2d(grid, (int(grid.shape[2]) // 4, int(grid.shape[3]) // 5))
        tokens = grid.flatten(2).permute(2, 0, 1)
        return self.mha(tokens, tokens, tokens)[0].transpose(0, 1)


class PaddedFrames(nn.Module):
    """The same slots after a strided Conv1d front end: 20 frames of 4 samples at 80, padded to 20."""

    def __init__(self):
        super().__init__()
        self.front, self.mha = nn.Conv1d(1, CHANNELS, 4, 4), nn.MultiheadAttention(CHANNELS, 2)

    def forward(self, x):
        frames = self.front(x.unsqueeze(1)).transpose(1, 2)
        frames = F.pad(frames, (0, 0, 0, 20 - int(frames.shape[1]))).transpose(0, 1)
        return self.mha(frames, frames, frames)[0].transpose(0, 1)


class ReplicatedFrames(PaddedFrames):
    """The frames padded by replication (helper 112): a Pad of mode `edge` by zeros at the export."""

    def forward(self, x):
        frames = self.front(x.unsqueeze(1)).transpose(1, 2)
        frames = F.pad(frames.transpose(1, 2), (0, 20 - int(frames.shape[1])), mode="replicate")
        frames = frames.permute(2, 0, 1)
        return self.mha(frames, frames, frames)[0].transpose(0, 1)


class RepeatedFrames(PaddedFrames):
    """The frames repeated to 20 (helper 112): a Tile by ones at the export."""

    def forward(self, x):
        frames = self.front(x.unsqueeze(1)).transpose(1, 2)
        frames = frames.repeat(1, 20 // int(frames.shape[1]), 1).transpose(0, 1)
        return self.mha(frames, frames, frames)[0].transpose(0, 1)


class PooledFrames(PaddedFrames):
    """Frames pooled to 10 slots with a Python-int kernel, 2 at the export: no op does nothing, but a pool has no
    weights, and its kernel may be sized so (a one-length rebuild gave 20 and 15 frames where PyTorch keeps 10)."""

    def forward(self, x):
        frames = self.front(x.unsqueeze(1))
        frames = F.avg_pool1d(frames, int(frames.shape[2]) // 10).permute(2, 0, 1)
        return self.mha(frames, frames, frames)[0].transpose(0, 1)


class PooledGrid(FixedGrid):
    """A 2 x 5 grid pooled with a Python-int kernel of 2 x 1 at the export: no op does nothing (helper 112)."""

    def forward(self, x):
        grid = self.patch(x)
        grid = F.avg_pool2d(grid, (int(grid.shape[2]) // 2, int(grid.shape[3]) // 5))
        tokens = grid.flatten(2).permute(2, 0, 1)
        return self.mha(tokens, tokens, tokens)[0].transpose(0, 1)


class Patches(nn.Module):
    """The control: attention straight over the patch tokens, whose count the Reshape bakes."""

    def __init__(self):
        super().__init__()
        self.patch, self.mha = nn.Conv2d(3, CHANNELS, 8, 8), nn.MultiheadAttention(CHANNELS, 2)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).permute(2, 0, 1)
        return self.mha(tokens, tokens, tokens)[0].transpose(0, 1)


class ClassToken(Patches):
    """A class token before the patch tokens (OpenCLIP's attention pool): floor(H/8) * floor(W/8) + 1 tokens."""

    def __init__(self):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, CHANNELS))

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1).transpose(0, 1)
        return self.mha(tokens, tokens, tokens)[0].transpose(0, 1)


IMAGE = ((2, 3, 32, 40), {"x": {0: "batch", 2: "height", 3: "width"}, "y": {0: "batch"}})
AUDIO = ((2, 80), {"x": {0: "batch", 1: "time"}, "y": {0: "batch"}})


def exported(module, example, axes, path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(*example),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes=axes)
    return path


def repair(path, out, *flags):
    return subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(out), *flags],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("module", "shape", "why"), [
    (PaddedSlots, IMAGE, "Pad '"), (FixedGrid, IMAGE, "AveragePool '"), (PaddedFrames, AUDIO, "Pad '"),
    (ReplicatedFrames, AUDIO, "Pad '"), (RepeatedFrames, AUDIO, "Tile '"), (PooledGrid, IMAGE, "token count of a grid"),
    (PooledFrames, AUDIO, "AveragePool '"),
])
def test_a_token_count_that_may_be_the_models_own_is_not_rebuilt(tmp_path, module, shape, why):
    path = exported(module(), *shape, tmp_path / "m.onnx")
    done = repair(path, tmp_path / "fixed.onnx")
    assert done.returncode == 1 and not (tmp_path / "fixed.onnx").exists(), done.stdout + done.stderr
    said = subprocess.run([sys.executable, "-m", "graphfix", "diagnose", str(path), "--static"], capture_output=True,
                          text=True, timeout=300).stdout
    assert "(unsafe)" in said and why in said, said


@pytest.mark.parametrize("module", [Patches, ClassToken])
def test_attention_straight_over_the_patch_tokens_is_rebuilt_on_request_and_matches(tmp_path, module):
    """The controls, the class token's too (helper 110: its count, a sum holding both floors, was squared). A grid's
    token count is an unsafe fix: a pool or repeat sized in Python to a fixed grid on the way leaves no mark (helper
    112's `avg_pool2d(f, (int(h) // 2, int(w) // 5))`), so the graph does not determine it; asked, it is right."""
    module = module().eval()
    path = exported(module, *IMAGE, tmp_path / "m.onnx")
    refused = repair(path, tmp_path / "refused.onnx")
    assert refused.returncode == 1 and not (tmp_path / "refused.onnx").exists(), refused.stdout + refused.stderr
    done = repair(path, tmp_path / "fixed.onnx", "--unsafe-fixes")
    assert done.returncode == 0 and "floor(height/8)*floor(width/8)" in done.stdout, done.stdout + done.stderr
    for shape in [(1, 3, 32, 40), (2, 3, 48, 64), (1, 3, 80, 96)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            want = module(x).numpy()
        np.testing.assert_allclose(run(str(tmp_path / "fixed.onnx"), {"x": x.numpy()})[0], want, rtol=1e-3, atol=1e-4)
