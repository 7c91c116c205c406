"""GF006 on structured constants of real PyTorch modules (random weights, exported the way users do): masks,
eyes, tables and sinusoids built with `int(T)` are rebuilt (with their alternatives named), the same modules built
from the traced size are quiet, and so are their dynamo exports."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from conftest import of_rule, run

import graphfix

STRUCTURES = ("causal-mask", "additive-mask", "eye", "table-prefix", "slot-mask", "sliding-window", "sinusoid",
              "whisper-table")
WIDE = ("local-window", "chunk-mask", "key-cutoff")  # all True at the export length: their edges lie past it
STRIDED = ("strided-head", "local-and-strided")  # Sparse Transformer's heads, their stride past the export length
STRUCTURES += WIDE + STRIDED
WINDOW = 4  # "sliding-window": each query sees itself and the 3 before it
EDGE = 9  # the wide masks': local attention |i - j| <= 9, wenet's chunks of 9 frames, keys j < 9
STRIDE = 8  # a strided head sees every 8th position back: at T=7, itself only (an eye)
EXPORT_TIME = 7
SIZES = ((1, 3), (2, EXPORT_TIME), (3, 12))  # (batch, time): shorter, the export length, longer


def structure_module(kind: str, baked: bool):
    """A tiny attention-like module whose `kind` of structured constant is built with `int(T)` when `baked`
    (folded at the export length by the tracer) or from the traced size otherwise (healthy)."""
    import torch
    from torch import nn

    class Module(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(8, 8)
            self.register_buffer("pe", torch.randn(1, 32, 8))
            self.register_buffer("slots", torch.randn(6, 8))
            # position tables computed as the PyTorch tutorial (interleaved) and Whisper (concatenated) do
            position, half = torch.arange(32.0)[:, None], torch.arange(4.0)
            tutorial = position * torch.exp(torch.arange(0, 8, 2).float() * (-math.log(10000.0) / 8))
            sinusoid = torch.stack([tutorial.sin(), tutorial.cos()], -1).reshape(32, 8)
            whisper = position * torch.exp(-math.log(10000) / 3 * half)[None, :]
            self.register_buffer("sinusoid", sinusoid[None])
            self.register_buffer("whisper", torch.cat([whisper.sin(), whisper.cos()], 1)[None])

        def size(self, x):
            return int(x.size(1)) if baked else x.size(1)

        def forward(self, x, mem):
            t, scores = self.size(x), self.q(x) @ x.transpose(1, 2)
            if kind == "causal-mask":
                mask = torch.tril(torch.ones(t, t))
                return scores.masked_fill(mask == 0, float("-inf")).softmax(-1) @ x + mem.mean(1, keepdim=True)
            if kind == "additive-mask":
                return (scores + torch.triu(torch.full((t, t), float("-inf")), 1)).softmax(-1) @ x + mem.mean(1, True)
            if kind == "slot-mask":  # T queries over 6 memory slots: one side of the mask follows T, one is fixed
                mask = torch.tril(torch.ones(t, 6))
                slots = (self.q(x) @ self.slots.T).masked_fill(mask == 0, float("-inf")).softmax(-1) @ self.slots
                return slots + mem.mean(1, keepdim=True)
            if kind == "sliding-window":
                i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
                mask = (i >= j) & (i - j < WINDOW)
                return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ x + mem.mean(1, keepdim=True)
            if kind == "eye":
                return (scores + torch.eye(t)) @ x + mem.mean(1, keepdim=True)
            if kind in STRIDED:
                i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
                mask = (i - j) % STRIDE == 0
                mask = (i >= j) & ((mask | (i - j < WINDOW)) if kind == "local-and-strided" else mask)
                return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ x + mem.mean(1, keepdim=True)
            if kind in WIDE:
                i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
                mask = (i - j).abs() <= EDGE if kind == "local-window" else j < EDGE if kind == "key-cutoff" else \
                    j < (torch.div(torch.arange(t), EDGE, rounding_mode="trunc") + 1)[:, None] * EDGE  # wenet
                return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ x + mem.mean(1, keepdim=True)
            if kind in ("sinusoid", "whisper-table"):  # the table is read only here: the export keeps the cut rows
                table = self.sinusoid if kind == "sinusoid" else self.whisper
                h = self.q(x + table[:, :t])
                return (h @ mem.transpose(1, 2)).softmax(-1) @ mem
            # The table also positions the memory (sliced with its traced length), so it stays in the graph;
            # "table-gone" reads it only with int(T), so the export keeps the cut rows alone.
            keys = mem + (self.pe[:, : mem.size(1)] if kind == "table-prefix" else 0)
            return ((self.q(x) + self.pe[:, :t]) @ keys.transpose(1, 2)).softmax(-1) @ keys

    torch.manual_seed(0)
    return Module().eval()


def structure_inputs(batch: int, time: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 100 + time)
    return {"x": rng.standard_normal((batch, time, 8)).astype(np.float32),
            "mem": rng.standard_normal((batch, time + 2, 8)).astype(np.float32)}


def export_structure(kind: str, baked: bool, path, dynamo: bool = False, time: int = EXPORT_TIME):
    import warnings

    import torch

    module = structure_module(kind, baked)
    example = tuple(torch.from_numpy(v) for v in structure_inputs(2, time).values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), dynamo=dynamo, opset_version=18 if dynamo else 17,
                          input_names=["x", "mem"],
                          output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"}, "mem": {0: "B", 1: "S"},
                                                            "y": {0: "B", 1: "T"}})
    return module


def torch_output(module, feeds):
    import torch

    with torch.no_grad():
        return module(*(torch.from_numpy(v) for v in feeds.values())).numpy()


def _matches_torch_at_every_size(module, model) -> None:
    for batch, time in SIZES:
        feeds = structure_inputs(batch, time)
        (got,) = run(model, feeds)
        np.testing.assert_allclose(got, torch_output(module, feeds), rtol=1e-4, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("kind,rebuilt_by,safety", [
    ("causal-mask", "Trilu", "unsafe"), ("additive-mask", "Trilu", "unsafe"),
    ("eye", "EyeLike", "unsafe"),  # 1 added on the diagonal: also every period s past T, `(i - j) % s == 0`
    ("table-prefix", "Slice", "unsafe"),  # pe[:T] at T=7 is also pe[7 - T : 7], rows anchored at their end
    ("slot-mask", "Trilu", "unsafe"),
    ("sliding-window", "Trilu", "unsafe"),  # traced at T=7 > 4: both edges show, but a stride past 7 would not
    # tables cut at the export length: positions 0..T-1, or capped, restarting every chunk, or of frequencies that
    # change past a length (helper 54)
    ("sinusoid", "Sin", "unsafe"), ("whisper-table", "Cos", "unsafe"),
])
def test_structured_constant_of_a_torch_module_is_rebuilt(kind, rebuilt_by, safety, tmp_path):
    """A triangle is also every window at least as wide as the export length, a window or a diagonal a strided
    pattern whose stride lies past it, a table's first T rows its rows that end at the export length
    (`pe[7 - T : 7]`), and a sinusoidal table the table of capped or restarting positions: reported with their
    alternatives and applied only with --unsafe-fixes (these modules are the simplest of them)."""
    pytest.importorskip("torch")
    path = tmp_path / f"{kind}.onnx"
    module = export_structure(kind, True, path)
    with pytest.raises(Exception, match="broadcast"):
        run(str(path), structure_inputs(1, 3))  # the export as it is: fails off the export length
    (finding,) = of_rule("GF006", graphfix.diagnose(str(path), static=True))
    named = [t for t in finding.tensors if f"constant '{t}' [" in finding.message]
    assert len(named) == 1 and f"T={EXPORT_TIME}" in finding.message  # the constant and the export-time size
    assert finding.fix is not None and finding.fix.safety.value == safety
    if safety == "unsafe":
        if kind in ("sliding-window", "eye"):
            assert "which is also a strided pattern" in finding.fix.reason, finding.fix.reason
        elif kind == "table-prefix":
            assert "[N - T : N]` with N = 7" in finding.fix.reason, finding.fix.reason
        elif kind in ("sinusoid", "whisper-table"):
            assert "clamp(max=c)" in finding.fix.reason and "dynamic NTK" in finding.fix.reason, finding.fix.reason
        else:
            assert "sliding window of any width >= 7" in finding.message and "sliding window" in finding.fix.reason
        default = graphfix.repair(str(path))
        assert default.status == "unchanged" and not default.applied
    result = graphfix.repair(str(path), output=str(tmp_path / "fixed.onnx"), unsafe_fixes=safety == "unsafe")
    assert result.status == "repaired", result
    assert not of_rule("GF006", result.after.findings)
    onnx.checker.check_model(result.model, full_check=True)
    assert rebuilt_by in [n.op_type for n in result.model.graph.node]
    _matches_torch_at_every_size(module, result.model)


@pytest.mark.torch
def test_sliding_window_traced_at_its_width_equals_tril_and_is_not_repaired_by_default(tmp_path):
    """The trap: a window of 4 traced at T=4 folds to exactly `tril(ones(4, 4))`. Rebuilt as Trilu it would be wrong
    at every longer length, so the default repair applies nothing and writes nothing."""
    pytest.importorskip("torch")
    path = tmp_path / "window-at-4.onnx"
    module = export_structure("sliding-window", True, path, time=WINDOW)
    (finding,) = of_rule("GF006", graphfix.diagnose(str(path), static=True))
    assert "mask" in finding.message and "sliding window of any width >= 4" in finding.message
    assert finding.fix.safety.value == "unsafe"
    result = graphfix.repair(str(path))
    assert result.status == "unchanged" and not result.applied
    # what --unsafe-fixes would write is the triangle, and it is wrong past the window: the reason is not idle
    forced = graphfix.repair(str(path), unsafe_fixes=True, validate=False)
    feeds = structure_inputs(2, 9)
    assert not np.allclose(run(forced.model, feeds)[0], torch_output(module, feeds), rtol=1e-4, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("kind", STRIDED + WIDE)
def test_a_mask_that_shows_a_simpler_one_at_the_export_length_is_not_repaired_by_default(kind, tmp_path):
    """Helper 46 found each rebuilt by default and written with exit 0, wrong past the export length:
    - at T=7 a head that sees every 8th position is an eye, and one that sees the 3 before it and every 8th is the
      sliding window of 4 (Sparse Transformer's strided heads);
    - local attention, wenet's subsequent_chunk_mask and a key cutoff wider than the export length let everything
      through, as no mask does.
    Now none is repaired by default; what --unsafe-fixes writes is wrong once the stride or the edge fits."""
    pytest.importorskip("torch")
    path = tmp_path / f"{kind}.onnx"
    module = export_structure(kind, True, path)
    (finding,) = of_rule("GF006", graphfix.diagnose(str(path), static=True))
    why = "which is also a strided pattern" if kind in STRIDED else "edge lies past the export size"
    assert finding.fix.safety.value == "unsafe" and why in finding.fix.reason, finding.fix.reason
    result = graphfix.repair(str(path), output=str(tmp_path / "default.onnx"))
    assert result.status == "unchanged" and not result.applied and result.output is None, result
    forced = graphfix.repair(str(path), unsafe_fixes=True, validate=False)
    feeds = structure_inputs(2, 3 * STRIDE if kind in STRIDED else 2 * EDGE + 3)
    assert not np.allclose(run(forced.model, feeds)[0], torch_output(module, feeds), rtol=1e-4, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("kind", STRUCTURES)
def test_structured_constant_built_from_the_traced_size_is_quiet(kind, tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / f"{kind}.onnx"
    module = export_structure(kind, False, path)
    found = of_rule("GF006", graphfix.diagnose(str(path), static=True))
    # a whole sinusoidal table cut to the length gets a note of its rows (the model's maximum), never more
    assert all(f.severity.value == "info" and "rows) to" in f.message for f in found), [f.message for f in found]
    assert bool(found) == (kind in ("sinusoid", "whisper-table"))
    feeds = structure_inputs(3, 12)
    np.testing.assert_allclose(run(str(path), feeds)[0], torch_output(module, feeds), rtol=1e-4, atol=1e-5)


@pytest.mark.torch
def test_table_cut_by_a_torch_module_and_gone_names_the_constant_and_the_pytorch_change(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "table-gone.onnx"
    export_structure("table-gone", True, path)
    (finding,) = of_rule("GF006", graphfix.diagnose(str(path), static=True))
    assert finding.fix is None and "not recoverable" in finding.message and f"T={EXPORT_TIME}" in finding.message
    (const,) = [t for t in finding.tensors if f"constant '{t}' [1, {EXPORT_TIME}, 8]" in finding.message]
    assert const in finding.hint and "self.pe[:, : x.size(1)]" in finding.hint and "without int()" in finding.hint


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("kind", STRUCTURES)
def test_dynamo_export_keeps_int_sizes_symbolic_and_is_quiet(kind, tmp_path):
    """torch.export keeps `int(x.size(1))` symbolic: the same module exports healthy with dynamo=True."""
    pytest.importorskip("torch")
    path = tmp_path / f"{kind}.onnx"
    module = export_structure(kind, True, path, dynamo=True)
    assert not of_rule("GF006", graphfix.diagnose(str(path), static=True))
    for batch, time in SIZES:
        feeds = structure_inputs(batch, time)
        np.testing.assert_allclose(run(str(path), feeds)[0], torch_output(module, feeds), rtol=1e-4, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("dynamo", [False, True], ids=["ts", "dynamo"])
def test_a_learned_bias_whose_dim_equals_the_export_length_is_quiet(dynamo, tmp_path):
    """speechbrain's relative-position attention adds learned biases `pos_bias_u` [1, 1, heads, head_dim] to the
    queries. Exported at T=4 = heads, shape inference names the head axis `unk__0` (a Reshape's -1): the size
    analysis knows it is 4 at every size, so the bias meets no size and is no baked table."""
    import warnings

    import torch
    from torch import nn

    class RelativeAttentionBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(32, 32)
            self.pos_bias_u = nn.Parameter(torch.randn(1, 1, 4, 8))

        def forward(self, x):
            b, t, _ = x.shape
            q = self.q(x).view(b, t, -1, 8)
            return (q + self.pos_bias_u).transpose(1, 2).softmax(-1).transpose(1, 2).reshape(b, t, 32)

    torch.manual_seed(0)
    module, path = RelativeAttentionBias().eval(), tmp_path / "bias.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 4, 32),), str(path), dynamo=dynamo, input_names=["x"],
                          output_names=["y"], opset_version=18 if dynamo else 17,
                          dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}})
    assert not [f for f in graphfix.diagnose(str(path)) if f.severity.value == "error"]
    result = graphfix.repair(str(path))
    assert result.status == "unchanged" and result.validation["passed"], result.validation
