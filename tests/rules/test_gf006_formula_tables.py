"""GF006's note on a whole sinusoidal table folded to N rows and cut to the length (a rotary cache kept as a buffer):
the graph runs only while T <= N; `--unsafe-fixes` computes more rows of the same formula. Traps: a learned table,
rows that are reduced or only measured (they run at any length as they are), a table a caller may feed."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from conftest import run

import graphfix


def gf006(findings):
    return [f for f in findings if f.rule == "GF006"]


def cached_rotary(rows: int, learned: bool = False, time_major: bool = False, gathered: bool = False):
    """A rotary cos/sin cache of `rows` positions kept as buffers and cut to the length in forward (as transformers'
    rotary embeddings cached them): the TorchScript export folds each table whole. `learned`: random tables.
    `time_major`: the cache `[rows, 1, 1, 8]` over `[T, B, heads, 8]` (transformers' Wav2Vec2Conformer and
    Wav2Vec2Bert rotary embeddings). `gathered`: its rows read at `arange(T)` (CLVP's), not sliced."""
    import torch

    class CachedRotary(torch.nn.Module):
        def __init__(self):
            super().__init__()
            inv = 1.0 / (10000 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8))
            freqs = torch.outer(torch.arange(rows, dtype=torch.float32), inv)
            emb = torch.cat([freqs, freqs], dim=-1)
            torch.manual_seed(0)
            shape = (rows, 1, 1, 8) if time_major else (rows, 8)
            self.register_buffer("cos_cached", (torch.randn(rows, 8) if learned else emb.cos()).reshape(shape))
            self.register_buffer("sin_cached", (torch.randn(rows, 8) if learned else emb.sin()).reshape(shape))

        def forward(self, x):  # [B, T, 8], or [T, B, 2, 8] where time-major
            length = x.shape[0] if time_major else x.shape[1]
            rows = torch.arange(length) if gathered else slice(0, length)
            cos, sin = self.cos_cached[rows], self.sin_cached[rows]
            x1, x2 = x.chunk(2, dim=-1)
            return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    return CachedRotary().eval()


def example(time_major: bool, batch: int, time: int) -> np.ndarray:
    shape = (time, batch, 2, 8) if time_major else (batch, time, 8)
    return np.random.default_rng(time).standard_normal(shape).astype(np.float32)


def export_rotary(module, path, time_major: bool = False):
    import torch

    axes = {0: "T", 1: "B"} if time_major else {0: "B", 1: "T"}
    torch.onnx.export(module, (torch.from_numpy(example(time_major, 2, 40)),), str(path), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": axes, "y": axes}, dynamo=False)
    return path


@pytest.mark.torch
@pytest.mark.parametrize(("time_major", "gathered"), [(False, False), (True, False), (False, True)])
def test_a_sinusoidal_table_folded_whole_notes_that_it_caps_the_length(time_major, gathered, tmp_path):
    """64 rows cut to T: past 64 the graph fails. The rows are a formula, so `--unsafe-fixes` computes
    max(64, T) of them, and then matches the module built with a longer cache; by default nothing changes (a fixed
    maximum, as in a tutorial's `self.pe[:, : x.size(1)]`, is healthy; a length-dependent scaling would make the
    longer rows wrong). A time-major cache `[64, 1, 1, 8]`, or one read at `arange(T)`, was not read as a table
    (helper 94: transformers' Wav2Vec2Conformer and CLVP)."""
    import torch

    module = cached_rotary(64, time_major=time_major, gathered=gathered)
    path = export_rotary(module, tmp_path / "rotary.onnx", time_major)
    found = gf006(graphfix.diagnose(str(path), static=True))
    assert len(found) == 2 and all(f.severity.value == "info" for f in found), [f.message for f in found]
    assert all("(64 rows)" in f.message and f.fix.safety.value == "unsafe" for f in found)
    assert graphfix.repair(str(path)).status == "unchanged"
    result = graphfix.repair(str(path), unsafe_fixes=True)
    assert result.status == "repaired", result
    longer = cached_rotary(128, time_major=time_major, gathered=gathered)
    for batch, time in ((1, 7), (2, 40), (3, 100)):
        x = example(time_major, batch, time)
        with torch.no_grad():
            want = longer(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(run(result.model, {"x": x})[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.torch
@pytest.mark.parametrize(("rows", "severity"), [(40, "error"), (64, "info")])
def test_a_table_exactly_as_long_as_the_export_length_is_an_error(rows, severity, tmp_path):
    """A rotary cache filled at the export length (a run before the export, helper 94) has as many rows as the
    length had at export: with `--trace-shape` saying so, an error, which repair does not leave by default; a table
    longer than the export length stays a note (it may be the model's own maximum)."""
    path = export_rotary(cached_rotary(rows), tmp_path / "rotary.onnx")
    found = gf006(graphfix.diagnose(str(path), static=True, trace_shapes={"x": (2, 40, 8)}))
    assert len(found) == 2 and {f.severity.value for f in found} == {severity}, [f.message for f in found]
    assert all(("length at export" in f.message) == (severity == "error") for f in found)
    result = graphfix.repair(str(path), trace_shapes={"x": (2, 40, 8)})
    assert result.status == "unchanged" and (result.error is None) == (severity == "info"), result


@pytest.mark.torch
@pytest.mark.parametrize(("time_major", "gathered"), [(False, False), (True, False), (False, True)])
def test_a_learned_table_cut_at_the_length_is_never_regrown(time_major, gathered, tmp_path):
    module = cached_rotary(64, learned=True, time_major=time_major, gathered=gathered)
    path = export_rotary(module, tmp_path / "learned.onnx", time_major)
    assert not gf006(graphfix.diagnose(str(path), static=True))


def cut_table(reader: str = "Add", overridable: bool = False) -> onnx.ModelProto:
    """A 64-row sinusoidal table (the Transformer's, interleaved) cut to x.shape[1] and read by `reader`."""
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    angles = np.arange(64)[:, None] / 10000.0 ** (np.arange(0, 8, 2) / 8)
    table = np.zeros((64, 8))
    table[:, 0::2], table[:, 1::2] = np.sin(angles), np.cos(angles)
    nodes = [helper.make_node("Shape", ["x"], ["shape"], start=1, end=2),
             helper.make_node("Slice", ["table", "zero", "shape", "zero"], ["cut"], name="cut")]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", 8])
    if reader == "Add":  # meets x row for row: longer inputs fail
        nodes.append(helper.make_node("Add", ["x", "cut"], ["y"]))
    elif reader == "ReduceMean":  # reduced first: runs at any length as it is
        nodes += [helper.make_node("ReduceMean", ["cut"], ["mean"], axes=[0], keepdims=1),
                  helper.make_node("Add", ["x", "mean"], ["y"])]
    else:  # only measured
        nodes.append(helper.make_node("Shape", ["cut"], ["y"]))
        out = helper.make_tensor_value_info("y", TensorProto.INT64, [2])
    graph = helper.make_graph(nodes, "cut", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 8])],
                              [out], [nh.from_array(table.astype(np.float32), "table"),
                                      nh.from_array(np.array([0], np.int64), "zero")])
    if overridable:  # an initializer that is also a graph input: a caller may feed another table
        graph.input.append(helper.make_tensor_value_info("table", TensorProto.FLOAT, [64, 8]))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize(("reader", "overridable", "noted"), [
    ("Add", False, True), ("ReduceMean", False, False), ("Shape", False, False), ("Add", True, False)],
    ids=["met-row-for-row", "reduced", "measured", "overridable"])
def test_a_cut_table_is_noted_only_where_a_longer_input_fails_on_it(reader, overridable, noted, tmp_path):
    """Reduced or only measured, the cut rows run at any length as they are (a Slice stops at the table's rows):
    growing them would change the result past 64 rows; a table a caller may feed is not the graph's to rebuild."""
    model = cut_table(reader, overridable)
    found = gf006(graphfix.diagnose(model, static=True))
    assert bool(found) == noted, [f.message for f in found]
    if not noted:
        result = graphfix.repair(model, unsafe_fixes=True)
        assert not any(a.rule == "GF006" for a in result.applied), result.applied


@pytest.mark.torch
def test_a_float64_table_built_with_a_python_int_is_regrown_in_float64(tmp_path):
    """The Transformer's table computed by numpy (float64) at int(T) and folded: rebuilt from Range at run time in
    float64, as numpy computed it (in float32 it drifted by 7e-5 at 5000 positions)."""
    import math
    import warnings

    import torch

    def table(length: int) -> np.ndarray:
        position = np.arange(length)[:, None]
        div_term = np.exp(np.arange(0, 16, 2) * (-math.log(10000.0) / 16))
        pe = np.zeros((length, 16))
        pe[:, 0::2], pe[:, 1::2] = np.sin(position * div_term), np.cos(position * div_term)
        return pe

    class Positions(torch.nn.Module):
        def forward(self, x):
            return x + torch.from_numpy(table(int(x.shape[1])))[None]

    path = tmp_path / "positions.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Positions(), (torch.randn(2, 12, 16, dtype=torch.float64),), str(path),
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"},
                                                                             "y": {0: "B", 1: "T"}}, dynamo=False)
    result = graphfix.repair(str(path), unsafe_fixes=True)  # unsafe: capped positions too
    assert result.status == "repaired", result.error
    for batch, time in ((1, 7), (2, 12), (3, 5000)):
        x = np.random.default_rng(time).standard_normal((batch, time, 16))
        np.testing.assert_allclose(run(result.model, {"x": x})[0], x + table(time)[None], rtol=0, atol=1e-9)


@pytest.mark.torch
def test_a_sinusoidal_table_of_the_frames_a_strided_slice_keeps_is_regrown_from_their_count(tmp_path):
    """Frames kept by `h[:, ::2]`, then a sinusoidal table of `int(h.shape[1])` rows: rebuilt from Range over the
    slice's length. With one frame (T = 1 or 2) the original broadcasts it to the 20 rows it baked: the proof
    compares the row both have, instead of refusing the repair for the rows the original made up."""
    import warnings

    import torch

    class FramesWithPositions(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(16, 32)

        def forward(self, x):
            h = self.proj(x)[:, ::2]
            n = int(h.shape[1])
            frequencies = torch.exp(torch.arange(0, 32, 2).float() * (-math.log(1e4) / 32))  # 10000's: a library's
            angle = torch.arange(n).float()[:, None] * frequencies[None]
            return h + torch.stack([angle.sin(), angle.cos()], -1).reshape(n, 32)

    torch.manual_seed(0)
    module, path = FramesWithPositions().eval(), tmp_path / "frames.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 40, 16),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "frames"}}, dynamo=False)
    result = graphfix.repair(str(path), unsafe_fixes=True)  # unsafe: capped positions too
    assert result.status == "repaired" and [a.rule for a in result.applied] == ["GF006"], result.error
    for batch, time in ((1, 23), (2, 40), (3, 64), (1, 1)):
        x = torch.randn(batch, time, 16)
        with torch.no_grad():
            want = module(x).numpy()
        np.testing.assert_allclose(run(result.model, {"x": x.numpy()})[0], want, rtol=1e-4, atol=1e-5)
