"""GF006 trace-baked-constant: constant tensors cut at an export-time size, found and (where structural) rebuilt."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from conftest import parse, run

import graphfix
from graphfix.validate import ValidationOptions


def gf006(findings):
    return [f for f in findings if f.rule == "GF006"]


def model_with(constant: np.ndarray, op: str = "Add") -> onnx.ModelProto:
    values = ", ".join(str(float(v)) for v in constant.reshape(-1))
    dims = ", ".join(str(d) for d in constant.shape)
    return parse(f"""< ir_version: 8, opset_import: ["" : 17] >
        g (float[B, T] x) => (float[B, T] y) <float[{dims}] c = {{{values}}}> {{
            y = {op}(x, c)
        }}""")


def feeds(batch: int, time: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(time).standard_normal((batch, time)).astype(np.float32)}


@pytest.mark.parametrize("constant,ops,expected,says", [
    (np.arange(6, dtype=np.float32).reshape(1, 6), ["Range"], lambda t: np.arange(t, dtype=np.float32),
     "clamp(max=c)"),
    (np.ones((1, 6), np.float32), [], lambda t: np.ones(t, np.float32), "added indicator"),
], ids=["arange", "uniform"])
def test_structural_constant_is_rebuilt_and_runs_at_every_length(constant, ops, expected, says, tmp_path):
    """0..5 is arange(T) or arange(T).clamp(max=c) for any c >= 5; ones added along T are also an indicator of the
    positions before an edge past 6 (helper 54): neither is rebuilt by default, and `--unsafe-fixes` builds the
    simplest."""
    model = model_with(constant)
    (finding,) = gf006(graphfix.diagnose(model, static=True))
    assert finding.severity.value == "error" and finding.fix is not None and finding.fix.safety.value == "unsafe"
    assert says in finding.fix.reason
    assert graphfix.repair(model).status == "unchanged"
    with pytest.raises(Exception, match="broadcast"):
        run(model, feeds(2, 9))  # the export length (6) runs, no other does
    # The original runs only at the export length and T=1, with the wrong output shape: no size gives a reference, so
    # the proof reaches `runs`; this test compares the values itself.
    result = graphfix.repair(model, output=str(tmp_path / "fixed.onnx"), validation=ValidationOptions(require="runs"),
                             unsafe_fixes=True)
    assert result.status == "repaired" and not gf006(result.after.findings)
    onnx.checker.check_model(result.model, full_check=True)
    assert all(op in [n.op_type for n in result.model.graph.node] for op in ops)
    for batch, time in [(1, 6), (2, 3), (3, 11)]:
        x = feeds(batch, time)
        (got,) = run(result.model, x)
        np.testing.assert_allclose(got, x["x"] + expected(time), rtol=1e-6)


@pytest.mark.parametrize("constant,op,safety", [
    (np.full((1, 5), 0.2, np.float32), "Mul", "unsafe"),  # 1/T at T=5: `full((T,), 1 / T)` keeps no 0.2 elsewhere
    (np.full((1, 6), 0.0, np.float32), "Add", "unsafe"),  # an added mask that lets everything through
    (np.full((1, 6), 1.0, np.float32), "Div", "safe"),  # dividing by ones is no mask
    (np.full((1, 6), 1.0, np.float32), "Sub", "unsafe"),  # subtracting them may be an indicator's (helper 54)
], ids=["one-over-T", "added-zeros", "divided-ones", "subtracted-ones"])
def test_a_uniform_constant_is_safe_only_where_nothing_else_gives_its_value(constant, op, safety):
    """Helper 47: `full((T,), 1 / T)` was shrunk keeping 1/5, wrong at every other length, and `x / ones(int(T))`
    was refused as if it were a mask. Helper 54: `x + (arange(T) < 20)` is all ones at T=12, so ones added or
    subtracted along T are also such an indicator."""
    (finding,) = gf006(graphfix.diagnose(model_with(constant, op), static=True))
    assert finding.fix.safety.value == safety, finding.fix.reason


def test_an_empty_constant_is_judged_not_crashed_on():
    model = parse("""<ir_version: 10, opset_import: ["" : 17]>
        g (float[T, 0] x) => (float[T, 0] y) <float[7, 0] c = {}> { y = Add(x, c) }""")
    assert [f.fix.safety.value for f in gf006(graphfix.diagnose(model, static=True))] == ["safe"]


def test_an_identity_added_to_a_graph_is_also_a_strided_pattern():
    """`adj + eye(int(N))` (a graph's self-loops) is also `adj + ((i - j) % s == 0)` for any s past N (a seasonal
    graph's links, helper 52: rebuilt as an eye, it was wrong past s with exit 0), so the eye is not rebuilt by
    default, however its values are applied."""
    eye = ", ".join(str(float(v)) for v in np.eye(6).reshape(-1))
    model = parse(f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[B, T, T] x) => (float[B, T, T] y) <float[6, 6] c = {{{eye}}}> {{ y = Add(x, c) }}""")
    (finding,) = gf006(graphfix.diagnose(model, static=True))
    assert finding.fix.safety.value == "unsafe" and "EyeLike" in finding.fix.summary
    assert "(i - j) % s == 0" in finding.fix.reason and "seasonal" in finding.fix.reason


def test_table_cut_at_the_export_length_is_reported_not_guessed():
    table = np.random.default_rng(0).standard_normal((1, 6)).astype(np.float32)  # a positional table's rows
    (finding,) = gf006(graphfix.diagnose(model_with(table), static=True))
    assert finding.fix is None and "not recoverable" in finding.message and "constant 'c' [1, 6]" in finding.message
    assert "self.pe[:, : x.size(1)]" in finding.hint and "without int()" in finding.hint


def test_a_learned_gain_is_never_regrown(tmp_path):
    """`x * gain` with gain [[0.3, -1.2]] where x's last dim was declared dynamic: two values, but no mask's. The
    original is only valid at width 2 and fails elsewhere, rightly; nothing may be fabricated for width 4."""
    model = model_with(np.array([[0.3, -1.2]], np.float32), op="Mul")
    (finding,) = gf006(graphfix.diagnose(model, static=True))
    assert finding.fix is None and "not recoverable" in finding.message
    result = graphfix.repair(model, unsafe_fixes=True)
    assert result.status == "unchanged" and result.model is not None and not result.applied


def test_constant_with_static_dims_is_quiet():
    model = parse("""< ir_version: 8, opset_import: ["" : 17] >
        g (float[B, 4] x) => (float[B, 4] y) <float[1, 4] c = {1.0, 2.0, 3.0, 4.0}> { y = Mul(x, c) }""")
    assert not gf006(graphfix.diagnose(model, static=True))


def test_a_size_one_constant_is_quiet():
    assert not gf006(graphfix.diagnose(model_with(np.full((1, 1), 2.0, np.float32)), static=True))


# --- structured constants in real PyTorch modules (random weights, exported the way users do) ----------------------
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
    (finding,) = gf006(graphfix.diagnose(str(path), static=True))
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
    assert not gf006(result.after.findings)
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
    (finding,) = gf006(graphfix.diagnose(str(path), static=True))
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
    (finding,) = gf006(graphfix.diagnose(str(path), static=True))
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
    found = gf006(graphfix.diagnose(str(path), static=True))
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
    (finding,) = gf006(graphfix.diagnose(str(path), static=True))
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
    assert not gf006(graphfix.diagnose(str(path), static=True))
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



def rotary(summed: bool = False) -> onnx.ModelProto:
    """A rotary cos/sin cache computed for 8 positions (the next power of two of the export length 6, as speechbrain's
    RoPEMHA does with Python ints), as the TorchScript exporter writes it: Constant arange(0, 8), Einsum with the
    frequencies, Cos and Sin stacked, `Reshape(8, 4)`, then the first T rows cut by a Slice. `summed`: the positions'
    sum is added too (their count then matters)."""
    positions = ", ".join(f"{float(p)}" for p in range(8))
    return parse(f"""< ir_version: 8, opset_import: ["" : 17] >
        g (float[B, T, 4] x) => (float[B, T, 4] y) {{
            pos = Constant <value = float[8] {{{positions}}}> ()
            freq = Constant <value = float[2] {{1.0, 0.1}}> ()
            angles = Einsum <equation = "i,j->ij"> (pos, freq)
            last = Constant <value = int64[1] {{-1}}> ()
            cos = Cos(angles)
            sin = Sin(angles)
            c = Unsqueeze(cos, last)
            s = Unsqueeze(sin, last)
            stacked = Concat <axis = -1> (c, s)
            rows = Constant <value = int64[1] {{8}}> ()
            width = Constant <value = int64[1] {{4}}> ()
            shape = Concat <axis = 0> (rows, width)
            table = Reshape(stacked, shape)
            start = Constant <value = int64[1] {{0}}> ()
            end = Shape <start = 1, end = 2> (x)
            axis = Constant <value = int64[1] {{0}}> ()
            cut = Slice(table, start, end, axis)
            {"rotated = Mul(x, cut)" if summed else "y = Mul(x, cut)"}
            {"total = ReduceSum <keepdims = 0> (pos)" if summed else ""}
            {"y = Add(rotated, total)" if summed else ""}
        }}""")


def rotary_reference(x: np.ndarray) -> np.ndarray:
    angles = np.outer(np.arange(x.shape[1], dtype=np.float32), np.float32([1.0, 0.1]))
    return x * np.stack([np.cos(angles), np.sin(angles)], -1).reshape(-1, 4)


def test_positions_computed_for_a_longer_table_and_cut_to_the_length_are_regrown(tmp_path):
    """arange(0, 8) only ever cut to the first T rows: Range(0, max(8, T)), the Reshape(8, 4) on its way taking -1.
    Up to 8 frames the repair computes what the original does; past it, what the formula gives (speechbrain's
    rotary Conformer, tests/frontends, is the same against PyTorch). Past 8 a module may also cap the positions or
    change its frequencies (dynamic NTK scaling computes its cache for max(T, 8)): unsafe, built with
    --unsafe-fixes."""
    model = rotary()
    (finding,) = gf006(graphfix.diagnose(model, static=True))
    assert "runs only while T <= 8" in finding.message and finding.fix is not None, finding.message
    assert finding.fix.safety.value == "unsafe" and "1 Reshape(s)" in finding.fix.summary
    assert "dynamic NTK" in finding.fix.reason, finding.fix.reason
    assert graphfix.repair(model).status == "unchanged"
    result = graphfix.repair(model, unsafe_fixes=True)
    assert result.status == "repaired", result
    for batch, time in ((1, 3), (2, 6), (3, 13)):
        x = np.random.default_rng(time).standard_normal((batch, time, 4)).astype(np.float32)
        (got,) = run(result.model, {"x": x})
        np.testing.assert_allclose(got, rotary_reference(x), rtol=1e-5, atol=1e-6)


def test_positions_read_other_than_through_the_cut_are_not_regrown():
    """The positions also summed: their count matters (8 at export, 16 in PyTorch past 8 frames, max(8, T) in a
    longer table), so the table is reported, not regrown."""
    findings = gf006(graphfix.diagnose(rotary(summed=True), static=True))
    assert findings and all(f.fix is None for f in findings), [f.message for f in findings]
    assert any("not regrown" in f.message for f in findings), [f.message for f in findings]


def test_a_fix_the_model_s_opset_cannot_hold_is_dropped_with_its_reason(tmp_path):
    """Opset 9 has only Slice-1, whose bounds are attributes: the fix's Slice up to x.shape[1] cannot be written
    there. It wrote one anyway, which onnxruntime refused to load (found by a review); the fix is dropped, the
    model refused with the reason, and nothing is written. (A table's prefix is an unsafe fix: asked for.)"""
    import subprocess
    import sys

    from onnx import TensorProto, helper, numpy_helper

    pe = np.random.default_rng(0).standard_normal((1, 4096, 8)).astype(np.float32)
    nodes = [helper.make_node("Add", ["x", "c"], ["h"]),
             helper.make_node("Slice", ["pe"], ["pe_mem"], starts=[0], ends=[16], axes=[1]),
             helper.make_node("Add", ["mem", "pe_mem"], ["k"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["h", "kt"], ["y"])]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 8]),
                                           helper.make_tensor_value_info("mem", TensorProto.FLOAT, ["B", 16, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", 16])],
                              [numpy_helper.from_array(pe, "pe"), numpy_helper.from_array(pe[:, :7].copy(), "c")])
    path = tmp_path / "opset9.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=4), path)
    done = subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(tmp_path / "o.onnx"),
                           "--unsafe-fixes"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "needs Slice of opset 10 or later" in done.stdout, done.stdout + done.stderr
    assert not (tmp_path / "o.onnx").exists()
