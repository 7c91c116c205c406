"""Traps from red team 38 (helper 57). One Python int, `T = int(x.shape[1])` traced at T = 7, pins a head split's
Reshape (GF004 rebuilds the entry, safe) and is also baked as an integer somewhere no rule reads: a Gather index,
Slice bounds, TopK's k, an integer Clip or Add, a ConstantOfShape's value, a Pool's kernel. Each repair was written
with exit 0 and the second use still at 7; the original fails at every other length, so no reference showed it.
Now each fix is unsafe (graphfix.analysis.echoes) and the repair refuses by default (exit 1, nothing written).

And a repaired model that fails below the export size at the same node as the original counted as "the model's
minimum size" whatever the node; it does only at a kernel (Conv, Pool, a reflecting Pad) now: a Gather whose index
was baked fails there, and PyTorch runs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from click.testing import CliRunner

import graphfix
from graphfix.analysis.echoes import echoes
from graphfix.cli import cli

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional
pytestmark = pytest.mark.torch


def _heads(x, t):
    """The GF004 trigger: the element count of [B, T, 2, 4] pins T."""
    return x.reshape(x.shape[0], t, 2, 4).sum(-1)


class Centre(nn.Module):
    def forward(self, x):
        t = int(x.shape[1])
        return _heads(x, t) + x[:, t // 2, None, :2]  # a Gather index 3


class Last(nn.Module):
    def forward(self, x):
        t = int(x.shape[1])
        return _heads(x, t) + x[:, t - 1, None, :2]  # a Gather index 6


class Roll(nn.Module):
    def forward(self, x):
        t = int(x.shape[1])
        return _heads(torch.roll(x, t // 2, 1), t)  # Slice bounds -3


class SecondHalf(nn.Module):
    def forward(self, x):
        t = int(x.shape[1])
        return _heads(x, t) + x[:, t // 2: t].sum(1)[:, None, :2]  # Slice start 3 beside the end 7 a fix rebuilds


class TopK(nn.Module):
    def forward(self, x):
        t = int(x.shape[1])
        return _heads(x, t) + x.topk(t // 2, dim=1).values.sum(1)[:, None, :2]  # k = 3


class ClampedLengths(nn.Module):
    def forward(self, x, n):
        t = int(x.shape[1])
        return _heads(x, t) * n.clamp(max=t)[:, None, None].float()  # an integer Clip by 7


class OffsetLengths(nn.Module):
    def forward(self, x, n):
        t = int(x.shape[1])
        return _heads(x, t), n + t  # an integer Add of 7


class FullLengths(nn.Module):
    def forward(self, x):
        t = int(x.shape[1])
        return _heads(x, t), torch.full((x.shape[0],), t - 1)  # a ConstantOfShape of 6: an encoder's lengths


class GlobalPool(nn.Module):
    def forward(self, x):
        t = int(x.shape[1])
        return _heads(x, t) + F.avg_pool1d(x.transpose(1, 2), t).mean(-1)[:, None, :2]  # kernel and stride 7


class Stride(nn.Module):
    def forward(self, x):
        t = int(x.shape[1])
        return _heads(x, t) + x[:, :: t // 3].sum(1)[:, None, :2]  # a Slice step 2, T // 3 at 7


class FeatureCut(nn.Module):
    """A healthy cut of the features (`x[..., :3]`): 3 is T // 2 at 7, but not along a length."""

    def forward(self, x):
        t = int(x.shape[1])
        return _heads(x, t) + x[..., :3].sum(-1, keepdim=True)


class Attention(nn.Module):
    """Self-attention whose head split bakes T = int(x.shape[1]) (42 features in 3 heads: no dim a form of 16)."""

    def __init__(self, width: int = 42):
        super().__init__()
        torch.manual_seed(0)
        self.qkv, self.out, self.width = nn.Linear(42, 3 * 42), nn.Linear(42, width), width

    def forward(self, x):
        b, t = x.shape[0], int(x.shape[1])
        q, k, v = self.qkv(x).reshape(b, t, 3, 3, 14).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-1, -2) * 14 ** -0.5).softmax(-1)
        return self.out((a @ v).transpose(1, 2).reshape(b, t, 42))


class CentreOfAttention(nn.Module):
    """`h[:, T // 2]` of the attention's output, which a Shape shaped: data, not a size (review 61)."""

    keeps_length = False

    def __init__(self):
        super().__init__()
        self.att = Attention()

    def forward(self, x):
        return self.att(x)[:, int(x.shape[1]) // 2]


class CountdownWeights(CentreOfAttention):
    """`(T - 1) - arange(T)`: the 15 meets positions, a Range's output, not a size (review 61)."""

    def forward(self, x):
        t = int(x.shape[1])
        w = ((t - 1) - torch.arange(x.shape[1])).float()
        return (self.att(x) * w[None, :, None]).sum(1)


class TiledMean(CentreOfAttention):
    """`.repeat(1, T, 1)`: a Tile's repeats of 16 (review 61)."""

    def forward(self, x):
        return self.att(x).mean(1) + x.mean(1, keepdim=True).repeat(1, int(x.shape[1]), 1).sum(1)


class GatedFeatures(CentreOfAttention):
    """The control: a GLU over 64 features, `z[..., :32]`, exported at T = 64: 32 is T // 2 and the features'
    axis is as long as T, but 64 is a weight's dim, so the cut is the model's own (review 61)."""

    keeps_length = True

    def __init__(self):
        super().__init__()
        self.att = Attention(width=64)

    def forward(self, x):
        z = self.att(x)
        return z[..., :32] * torch.sigmoid(z[..., 32:])


WITH_LENGTHS = (ClampedLengths, OffsetLengths)


def export(module: nn.Module, path: Path, length: int = 7) -> Path:
    x = torch.randn(2, length, 42 if isinstance(module, CentreOfAttention) else 8)
    args, names, axes = (x,), ["x"], {"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}}
    outputs = ["y"]
    if isinstance(module, WITH_LENGTHS):
        args, names, axes = (x, torch.tensor([3, 9])), ["x", "n"], {**axes, "n": {0: "B"}}
    if isinstance(module, (OffsetLengths, FullLengths)):
        outputs, axes = ["y", "lengths"], {**axes, "lengths": {0: "B"}}
    if not getattr(module, "keeps_length", True):
        axes = {**axes, "y": {0: "B"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=outputs, dynamic_axes=axes)
    return path


def repair(path: Path, *flags: str):
    out = path.with_name("fixed.onnx")
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), *flags], catch_exceptions=False)
    return done, out


@pytest.mark.parametrize("module", [Centre, Last, Roll, SecondHalf, TopK, ClampedLengths, OffsetLengths, FullLengths,
                                    GlobalPool], ids=lambda m: m.__name__)
def test_a_size_baked_as_an_integer_beside_a_safe_fix_makes_it_unsafe(tmp_path, module):
    path = export(module(), tmp_path / "m.onnx")
    done, out = repair(path)
    assert done.exit_code == 1 and not out.exists(), done.output
    fixes = [f.fix for f in graphfix.diagnose(str(path), static=True) if f.fix is not None]
    assert fixes and all(fix.safety.value == "unsafe" for fix in fixes), [(f.summary, f.safety) for f in fixes]
    assert any("reads the integer" in fix.reason for fix in fixes), [fix.reason for fix in fixes]


@pytest.mark.parametrize("module", [CentreOfAttention, CountdownWeights, TiledMean], ids=lambda m: m.__name__)
def test_an_echo_past_an_attention_layer_makes_the_fix_unsafe(tmp_path, module):
    path = export(module(), tmp_path / "m.onnx", length=16)
    done, out = repair(path)
    assert done.exit_code == 1 and not out.exists(), done.output
    fixes = [f.fix for f in graphfix.diagnose(str(path), static=True) if f.fix is not None]
    assert fixes and all(fix.safety.value == "unsafe" for fix in fixes), [(f.summary, f.safety) for f in fixes]


def test_a_cut_of_features_as_wide_as_the_length_stays_safe(tmp_path):
    done, out = repair(export(GatedFeatures(), tmp_path / "m.onnx", length=64))
    assert done.exit_code == 0 and out.exists(), done.output


def test_a_cut_of_the_features_is_no_echo_and_the_fix_stays_safe(tmp_path):
    """The control: 3 is T // 2 at T = 7, but it cuts the 8 features, not a length. Repaired (exit 0), and the
    suite's guard compares the result with the module at other lengths."""
    path = export(FeatureCut(), tmp_path / "m.onnx")
    done, out = repair(path)
    assert done.exit_code == 0 and out.exists(), done.output


@pytest.mark.xfail(strict=True, reason="known miss: an integer of magnitude 2 or less is every model's own "
                                       "(`x[:, 1:]`, `x[:, ::2]`), so T // 3 = 2 at T = 7 is not read as a size")
def test_a_step_of_two_baked_from_the_length_is_refused(tmp_path):
    done, out = repair(export(Stride(), tmp_path / "m.onnx"))
    assert done.exit_code == 1 and not out.exists(), done.output


def test_a_repair_failing_below_the_export_size_at_a_gather_fails_the_proof(tmp_path):
    """With --unsafe-fixes the fix is applied; the repaired `x[:, T - 1]` still indexes 6, so below T = 7 it
    fails where the original fails too (the same Gather), and where PyTorch runs: no minimum size, a failure."""
    done, out = repair(export(Last(), tmp_path / "m.onnx"), "--unsafe-fixes")
    assert done.exit_code == 1 and not out.exists(), done.output
    assert "model's minimum size" not in done.output, done.output


def _graph(op: str, data_shape: list, constant: int, attrs: dict | None = None, axis_input: int | None = None):
    x = gs.Variable("x", np.float32, data_shape)
    inputs = [x, gs.Constant("c", np.array([constant], np.int64))]
    if op == "Slice":
        inputs = [x, gs.Constant("s", np.array([constant], np.int64)), gs.Constant("e", np.array([99], np.int64)),
                  gs.Constant("a", np.array([axis_input], np.int64))]
    y = gs.Variable("y", np.float32)
    return gs.Graph(nodes=[gs.Node(op, op.lower(), inputs=inputs, outputs=[y], attrs=attrs or {})], inputs=[x],
                    outputs=[y])


@pytest.mark.parametrize(("op", "shape", "constant", "attrs", "axis", "echoed"), [
    ("Gather", [2, "T", 8], 3, {"axis": 1}, None, True),  # T // 2 along the length
    ("Gather", [2, "T", 8], 3, {"axis": 2}, None, False),  # along the 8 features
    ("Gather", [2, "T", 8], 13, {"axis": 1}, None, False),  # no form of 7 (12 is 7 + 5, 4 is ceil(7 / 2))
    ("Slice", [2, "T", 8], -3, None, 1, True),  # -(T // 2): a roll's cut
    ("Slice", [2, "T", 8], 1, None, 1, False),  # x[:, 1:], every model's own
    ("Slice", [2, 7, 8], 6, None, 1, True),  # a static export shows its length as 7
])
def test_integer_echoes_are_cuts_along_an_axis_of_the_size(op, shape, constant, attrs, axis, echoed):
    graph = _graph(op, shape, constant, attrs, axis)
    shapes = {"x": shape}
    heard = echoes(graph, {7}, lambda t: np.asarray(t.values) if isinstance(t, gs.Constant) else None,
                   lambda t: shapes.get(t.name))
    assert bool(heard) is echoed, heard


def test_a_constant_beside_a_size_read_from_a_shape_is_the_models_own():
    """`(T + 7) // 8`: the 7 meets a size the graph reads from Shape, so it is no echo of T = 7."""
    x = gs.Variable("x", np.float32, [2, "T", 8])
    dims, t, plus = gs.Variable("dims", np.int64), gs.Variable("t", np.int64), gs.Variable("plus", np.int64)
    nodes = [gs.Node("Shape", "shape", inputs=[x], outputs=[dims]),
             gs.Node("Gather", "pick", inputs=[dims, gs.Constant("one", np.array(1, np.int64))], outputs=[t]),
             gs.Node("Add", "add", inputs=[t, gs.Constant("seven", np.array(7, np.int64))], outputs=[plus])]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[plus])
    heard = echoes(graph, {7}, lambda t: np.asarray(t.values) if isinstance(t, gs.Constant) else None,
                   lambda t: None)
    assert heard == []


def test_diagnose_says_why_the_fix_is_unsafe(tmp_path):
    """The refusal points at `graphfix diagnose`: its text and its JSON name the constant that doubts the fix."""
    import json

    path = export(Centre(), tmp_path / "m.onnx")
    text = CliRunner().invoke(cli, ["diagnose", "--static", str(path)], catch_exceptions=False).output
    assert "unsafe because:" in text and "reads the integer 3 as an index, which is 7 // 2" in text, text
    done = CliRunner().invoke(cli, ["diagnose", "--static", "--format", "json", str(path)], catch_exceptions=False)
    fixes = [f["fix"] for f in json.loads(done.output)["models"][0]["findings"] if f["fix"]]
    assert any("reads the integer 3" in fix["reason"] for fix in fixes), fixes
