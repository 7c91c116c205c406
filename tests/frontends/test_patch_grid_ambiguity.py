"""Why MobileViT's unfold is not repaired (#22): the graph its trace leaves does not say what varies.

timm's MobileViT block computes its patch counts with `math.ceil` on the traced height and width, so the
TorchScript export bakes them: `reshape(B * C * n_h, p_h, n_w, p_w)` with n_h = 4, n_w = 6 at an 8x12 feature map
and 2x2 patches. A block of the opposite design, a fixed 4x6 grid of patches whose size follows the input
(`p_h = int(H) // 4`), bakes the patch size instead, and at the same export size writes the same graph: the same
ops, the same constants, `[B*C*4, 2, 6, 2]`. From the graph, the 4 and the 6 may grow with the input (MobileViT)
or the 2s may (the fixed grid); both keep every element count, and the two models compute different things at
every other size. So no repair of that graph is determined: graphfix must repair neither, and say (exit 1) that
they fail at other sizes. The obvious repair (MobileViT's) is wrong for the second model. (Telling them apart
needs the module: traces at other sizes show which constants move; graphfix.export makes them, and
tests/exporting/test_refit.py repairs each design so.)
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import run

from graphfix.cli import cli

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.torch]

EXPORT = (2, 3, 8, 12)  # batch, channels, height, width of the feature map at export
OTHER = (1, 3, 16, 12)


class PatchCount(torch.nn.Module):
    """MobileViT's unfold and fold (timm `MobileVitBlock`): 2x2 patches, their count from the size."""

    def forward(self, x):
        b, c, h, w = x.shape
        n_h, n_w = math.ceil(h / 2), math.ceil(w / 2)
        return _mix(x, b, c, n_h, 2, n_w, 2)


class FixedGrid(torch.nn.Module):
    """A fixed 4x6 grid of patches whose size follows the input."""

    def forward(self, x):
        b, c, h, w = x.shape
        p_h, p_w = int(h) // 4, int(w) // 6
        return _mix(x, b, c, 4, p_h, 6, p_w)


def _mix(x, b, c, n_h, p_h, n_w, p_w):
    """Unfold into n_h*n_w patches of p_h*p_w pixels, mix the pixels of each patch position across patches (as a
    transformer attends across patches), fold back."""
    patches = x.reshape(b * c * n_h, p_h, n_w, p_w).transpose(1, 2)
    patches = patches.reshape(b, c, n_h * n_w, p_h * p_w).transpose(1, 3)  # [B, P, N, C]
    mixed = patches - patches.mean(dim=2, keepdim=True) * 0.5
    folded = mixed.transpose(1, 3).reshape(b * c * n_h, n_w, p_h, p_w).transpose(1, 2)
    return folded.reshape(b, c, n_h * p_h, n_w * p_w)


def _export(module, path):
    x = torch.randn(*EXPORT)
    torch.onnx.export(module, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False,
                      dynamic_axes={"x": {0: "B", 2: "H", 3: "W"}, "y": {0: "B", 2: "H", 3: "W"}})
    return path


def _shape_of_graph(path) -> tuple[list[str], list[list[int]]]:
    """Its ops in order, and the integer constants they read in order: the graph without names."""
    model = onnx.load(str(path))
    constants = [onnx.numpy_helper.to_array(a.t).reshape(-1).tolist() for n in model.graph.node
                 for a in n.attribute if n.op_type == "Constant" and a.t.data_type == onnx.TensorProto.INT64]
    return [n.op_type for n in model.graph.node], constants


def test_two_designs_leave_one_graph_and_neither_is_repaired(tmp_path):
    paths = {name: _export(module(), tmp_path / f"{name}.onnx")
             for name, module in (("count", PatchCount), ("grid", FixedGrid))}
    assert _shape_of_graph(paths["count"]) == _shape_of_graph(paths["grid"])
    x = np.random.default_rng(0).standard_normal(OTHER).astype(np.float32)
    with torch.no_grad():
        count, grid = (m()(torch.from_numpy(x)).numpy() for m in (PatchCount, FixedGrid))
    assert not np.allclose(count, grid, atol=1e-3)  # they differ at another size: the repairs would too
    for name, path in paths.items():
        np.testing.assert_allclose(run(str(path), {"x": x[:, :, :8]}), run(str(paths["count"]), {"x": x[:, :, :8]}))
        fixed = tmp_path / f"{name}_fixed.onnx"
        result = CliRunner().invoke(cli, ["repair", str(path), "-o", str(fixed)])
        assert result.exit_code == 1, result.output
        assert "unchanged model fails" in result.output, result.output  # exit 1: what it wrote is the input, as is
        assert not fixed.exists() or fixed.read_bytes() == path.read_bytes()
