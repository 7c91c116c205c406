"""Traps from red team 37 (helper 54). Each was written wrong with exit 0 by `graphfix repair` with its default
flags ("validation: passed"), and is now refused by default (exit 1, nothing written); the unsafe fix the finding
names is still what `--unsafe-fixes` applies, right where the simplest construction is the module's.

- a sinusoidal table over positions that restart every chunk (`arange(T) % 16`), that are capped
  (`clamp(max=15)`), or whose frequencies change past a length (dynamic NTK rotary scaling past 32), each traced
  at a length where it equals the standard table: the table was regrown as the standard one, safe;
- one Python int T in a head split's Reshape (GF004 pins it) and in a mean, `h.sum(1) / T` (a Div by 12.0): the
  Reshape was rebuilt and the Div kept dividing by the export length;
- an indicator added (`x + (arange(T) < 20)`), all ones at the export length 12: shrunk to one 1, safe.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import run

import graphfix

torch = pytest.importorskip("torch")
from fixtures.baked_heads import D, export, repair  # noqa: E402  (imports torch)

nn = torch.nn
pytestmark = pytest.mark.torch


def _sinusoid(positions, d=D, base=10000.0):
    inv = 1.0 / base ** (torch.arange(0, d, 2).float() / d)
    angles = positions.float()[:, None] * inv[None, :]
    return torch.cat([angles.sin(), angles.cos()], -1)


class ChunkPositions(nn.Module):
    """Positions restart every 16 frames (streaming chunks), exported at one chunk."""

    def forward(self, x):
        return x + _sinusoid(torch.arange(int(x.shape[1])) % 16)


class CappedPositions(nn.Module):
    """Positions clipped at 15 (a relative-position clip), exported at 16 frames."""

    def forward(self, x):
        return x + _sinusoid(torch.arange(int(x.shape[1])).clamp(max=15))


class DynamicNTKRotary(nn.Module):
    """Rotary positions whose base grows past 32 frames (transformers' dynamic NTK scaling), exported at 24."""

    def forward(self, x):
        t = int(x.shape[1])
        base = 10000.0 * ((2 * t / 32) - 1) ** (D / (D - 2)) if t > 32 else 10000.0
        emb = _sinusoid(torch.arange(t), base=base)
        cos, sin = emb[:, D // 2:].repeat(1, 2), emb[:, : D // 2].repeat(1, 2)
        half = torch.cat([-x[..., D // 2:], x[..., : D // 2]], -1)
        return x * cos + half * sin


class MeanOfHeads(nn.Module):
    """One head split off and merged with int(T), then a mean over time by the same int."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(D, D)

    def forward(self, x):
        b, t = x.shape[0], int(x.shape[1])
        h = self.lin(x).reshape(b, t, 1, D).transpose(1, 2).reshape(b, t, D)
        return h.sum(1) / t


class MeanOverTPlusOne(MeanOfHeads):
    """The same head split, then the sum over time divided by T + 1: an echo only beside the sum (review 56)."""

    def forward(self, x):
        b, t = x.shape[0], int(x.shape[1])
        return self.lin(x).reshape(b, t, 1, D).transpose(1, 2).reshape(b, t, D).sum(1) / (t + 1)


class ScaledHeads(MeanOfHeads):
    """The same head split, then a scale of the model's own instead of the mean."""

    def forward(self, x):
        b, t = x.shape[0], int(x.shape[1])
        return self.lin(x).reshape(b, t, 1, D).transpose(1, 2).reshape(b, t, D) * 0.37


class AddedIndicator(nn.Module):
    """1 added to the first 20 frames, 0 past them."""

    def forward(self, x):
        return x + (torch.arange(int(x.shape[1])) < 20).float()[:, None]


def error_at(module: nn.Module, path: Path, length: int) -> float:
    x = torch.randn(1, length, D)
    with torch.no_grad():
        want = module(x).numpy()
    return float(np.abs(run(str(path), {"x": x.numpy()})[0] - want).max())


CASES = {  # name: (module, export length, output axes)
    "chunk-positions": (ChunkPositions(), 16, {0: "B", 1: "T"}),
    "capped-positions": (CappedPositions(), 16, {0: "B", 1: "T"}),
    "dynamic-ntk": (DynamicNTKRotary(), 24, {0: "B", 1: "T"}),
    "mean-by-the-same-int": (MeanOfHeads(), 12, {0: "B"}),
    "sum-over-t-plus-one": (MeanOverTPlusOne(), 12, {0: "B"}),
    "added-indicator": (AddedIndicator(), 12, {0: "B", 1: "T"}),
}


@pytest.mark.parametrize("name", CASES)
def test_a_construction_the_graph_does_not_determine_is_refused_by_default(tmp_path, name):
    """Refused, and every fix the diagnosis offers is unsafe, or it offers candidates. (Had it written, the suite's
    guard would compare the output with the module at longer lengths, where each of these differs from the simplest
    construction.)"""
    module, length, axes = CASES[name]
    path = export(module, tmp_path / f"{name}.onnx", length, axes)
    done, out = repair(path)
    assert done.exit_code == 1 and not out.exists(), done.output
    findings = graphfix.diagnose(str(path), static=True)
    fixes = [f.fix for f in findings if f.fix is not None]  # or candidates to choose among (an entry of 1 is one)
    assert fixes or any(f.choice is not None for f in findings), findings
    assert all(fix.safety.value == "unsafe" for fix in fixes), [(f.summary, f.safety) for f in fixes]


class StandardPositions(nn.Module):
    """The standard table, `pe[:int(T)]` of positions 0, 1, ..., T-1: the simplest construction is the module's."""

    def forward(self, x):
        return x + _sinusoid(torch.arange(int(x.shape[1])))


def test_the_simplest_construction_is_still_built_and_right_where_it_is_the_modules(tmp_path):
    module = StandardPositions()
    path = export(module, tmp_path / "standard.onnx", 16, {0: "B", 1: "T"})
    done, out = repair(path, "--unsafe-fixes")
    assert done.exit_code == 0, done.output
    for length in (1, 16, 40):
        assert error_at(module, out, length) < 1e-4


def test_a_float_constant_that_echoes_no_baked_size_leaves_the_fix_safe(tmp_path):
    """The head split alone, beside a scale of the model's own (0.37, no function of 12): safe, repaired."""
    module = ScaledHeads()
    path = export(module, tmp_path / "scaled.onnx", 12, {0: "B", 1: "T"})
    done, out = repair(path)
    assert done.exit_code == 0, done.output
    for length in (1, 5, 30):
        assert error_at(module, out, length) < 1e-4


def test_an_attention_scale_that_equals_one_over_t_minus_one_does_not_doubt_the_repair(tmp_path):
    """Review 56: nn.MultiheadAttention with 16-dim heads scales the queries by 0.25, which is 1/(T - 1) at T = 5;
    the first echo check refused its repair there. The scale meets the queries, which nothing summed over the
    length: repaired by default (the suite's guard compares it with the module at other lengths)."""

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.attention = nn.MultiheadAttention(64, 4)

        def forward(self, x):
            return self.attention(x, x, x)[0]

    module = Attention().eval()
    path = tmp_path / "attention.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(5, 2, 64),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "T", 1: "B"}, "y": {0: "T", 1: "B"}})
    done, out = repair(path)
    assert done.exit_code == 0 and "repaired" in done.output, done.output
    for length in (1, 5, 21):
        x = torch.randn(length, 2, 64)
        with torch.no_grad():
            want = module(x).numpy()
        np.testing.assert_allclose(run(str(out), {"x": x.numpy()})[0], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("value", "size", "summed", "echoed"), [
    (1 / 12, 12, False, True), (math.sqrt(12), 12, False, True), (12.5, 12, False, False), (0.5, 12, False, False),
    (11.0, 12, True, True), (11.0, 12, False, False),  # T - 1 only beside a sum over T (`h.sum(1) / (T - 1)`)
    (96.0, 12, True, True),  # T times a dim of what was summed (`h.sum((1, 2)) / (T * D)`)
    (0.125, 9, False, False),  # 1/sqrt(64), an attention scale: 1/(T - 1) at T=9, but nothing summed (helper 56)
])
def test_echoes_are_the_simple_functions_of_a_size(value, size, summed, echoed):
    import onnx_graphsurgeon as gs

    from graphfix.analysis.echoes import echoes

    x = gs.Variable("x", np.float32, [2, size, 8])
    c = gs.Constant("c", np.array(value, np.float32))
    h, y = gs.Variable("h", np.float32), gs.Variable("y", np.float32)
    nodes = [gs.Node("ReduceSum" if summed else "Relu", "sum", inputs=[x], outputs=[h],
                     attrs={"axes": [1, 2]} if summed else {}),
             gs.Node("Div", "div", inputs=[h, c], outputs=[y])]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[y])
    shapes = {"x": [2, size, 8]}
    heard = echoes(graph, {size}, lambda t: np.asarray(t.values) if isinstance(t, gs.Constant) else None,
                   lambda t: shapes.get(t.name))
    assert bool(heard) is echoed, heard
