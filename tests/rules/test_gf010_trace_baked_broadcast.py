"""GF010 on outputs declared dynamic that a broadcast holds at an export-time size (helpers 33 and 35 wrote these
models; each was repaired with exit 0 and stayed wrong): `torch.ones(int(T), 8)` added to a pooled `[B, 1, 8]`, or
`pooled.expand(-1, int(T), -1)`, traced at T = 40. GF004 repaired the Reshape the same `int(T)` baked, the model
then ran at every T, and it returned 40 rows where PyTorch returns T: the proof had nothing to compare the other
sizes with (the original fails there) and, where the export size is derived through a strided Conv or equals a
declared size, nothing to learn it from. Now an error with no fix: `repair` refuses and writes nothing."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
from conftest import run
from onnx import TensorProto, helper

import graphfix
from graphfix.analysis.held_axes import held_by
from graphfix.analysis.sizes import static_sizes

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch]
nn = torch.nn


def findings(path, rule="GF010", **options):
    return [f for f in graphfix.diagnose(str(path), static=True, **options) if f.rule == rule]


def repair(path, out, *flags):
    return subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(out), *flags],
                          capture_output=True, text=True, timeout=300)


def export(module, path, t=40, inputs=("x",)):
    axes = {name: {0: "B", 1: "T" if name == "x" else "S"} for name in inputs}
    outputs = getattr(module, "outputs", ("y",))
    axes.update({name: {0: "B", 1: "frames"} for name in outputs})
    torch.manual_seed(0)
    example = tuple(torch.randn(2, t, 16) for _ in inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, opset_version=17, input_names=list(inputs),
                          output_names=list(outputs), dynamic_axes=axes)
    return path


class Frames(nn.Module):
    """A Linear, a Reshape baked with int(T) (GF004 repairs it), and `ones(int(T) - drop, 8)` on a pooled frame."""

    def __init__(self, drop=0):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.drop = nn.Linear(16, 32), drop

    def forward(self, x):
        h = self.lin(x)
        t = int(h.shape[1])
        g = h.reshape(h.shape[0], t, 4, 8).mean(2)
        return h.mean(1, keepdim=True)[..., :8] + torch.ones(t - self.drop, 8) + g[:, :1]


class ConvFrames(nn.Module):
    """A stride-2 Conv1d front end (19 frames at T = 40 or 41) whose frame count a Reshape bakes; the export size of
    T is only derived. `expand` spreads the pooled input over int(T) rows, or `ones(int(T), 8)` is added."""

    outputs = ("y", "z")

    def __init__(self, expand):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.expand = nn.Conv1d(16, 32, 4, 2), expand

    def forward(self, x):
        f = self.conv(x.transpose(1, 2)).transpose(1, 2)
        n, t = int(f.shape[1]), int(x.shape[1])
        g = f.reshape(f.shape[0], n, 4, 8).mean(2)
        pooled = x.mean(1, keepdim=True)
        return g, pooled.expand(-1, t, -1) * 2 if self.expand else pooled[..., :8] + torch.ones(t, 8)


class TwoInputs(Frames):
    """Two inputs pinned at the same export length by their own baked Reshapes: 40 is T's and S's."""

    def forward(self, x, m):
        return super().forward(x) + super().forward(m)[:, :1]


class Repeated(Frames):
    """`repeat(1, int(T), 1)` of a pooled frame (Tile), or `F.interpolate(size=int(T))` of the frames (Resize)."""

    def __init__(self, resize):
        super().__init__()
        self.resize = resize

    def forward(self, x):
        h = self.lin(x)
        t = int(h.shape[1])
        g = h.reshape(h.shape[0], t, 4, 8).mean(2)
        if self.resize:
            return nn.functional.interpolate(g.transpose(1, 2)[..., ::2], size=t).transpose(1, 2)
        return h.mean(1, keepdim=True)[..., :8].repeat(1, t, 1) + g[:, :1]


class Projected(Frames):
    """A pooled frame spread over int(T) rows, then a Linear (a MatMul by a weight keeps the rows)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = self.lin(x)
        t = int(h.shape[1])
        g = h.reshape(h.shape[0], t, 4, 8).mean(2)
        return self.fc(h.mean(1, keepdim=True)[..., :8].expand(-1, t, -1)) + g[:, :1]


@pytest.mark.parametrize(("name", "module", "t", "inputs"), [
    ("ones", Frames(), 40, ("x",)),
    ("t_equals_a_declared_size", Frames(), 16, ("x",)),  # T = 16 at export, as the feature size
    ("conv_ones", ConvFrames(expand=False), 40, ("x",)),
    ("conv_expand", ConvFrames(expand=True), 40, ("x",)),
    ("two_inputs", TwoInputs(), 40, ("x", "m")),
    ("repeat", Repeated(resize=False), 40, ("x",)),
    ("interpolate", Repeated(resize=True), 40, ("x",)),
    ("matmul", Projected(), 40, ("x",)),
])
def test_an_output_held_at_an_export_size_is_an_error_and_refused(tmp_path, name, module, t, inputs):
    path = export(module, tmp_path / f"{name}.onnx", t, inputs)
    found = findings(path)
    assert [f.severity.value for f in found] == ["error"] and found[0].fix is None, found
    assert f"is {t} at every size" in found[0].message and f"{t} comes from an export size" in found[0].message
    done = repair(path, tmp_path / "out.onnx")
    assert done.returncode == 1 and "GF010" in done.stdout + done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "out.onnx").exists()


class BehindABakedReshape(Frames):
    """`ones(int(T), 8)` added to frames that a Reshape baked with the same int(T) holds at 40 too."""

    def forward(self, x):
        h = self.lin(x)
        t = int(h.shape[1])
        return h.reshape(h.shape[0], t, 4, 8).mean(2) + torch.ones(t, 8)


def test_a_constant_that_meets_the_frames_is_gf006s_and_repaired(tmp_path):
    """Two ways hold the 40: the constant, and the Reshape GF004 repairs. The Reshape explains the 40 as well as a
    learned table of queries would (a DETR decoder at T = its query count is healthy): no GF010 finding. Here the
    constant meets the frames themselves, so GF006 knows it for `ones(int(T), 8)`: ones along T are also an
    indicator of the frames before an edge past 40 (helper 54), so the default repair refuses, and
    `--unsafe-fixes` shrinks it: repaired, and it matches PyTorch."""
    module = BehindABakedReshape().eval()
    path = export(module, tmp_path / "both.onnx")
    assert findings(path) == []
    done = repair(path, tmp_path / "default.onnx")
    assert done.returncode == 1 and "GF006" in done.stdout, done.stdout + done.stderr
    done = repair(path, tmp_path / "out.onnx", "--unsafe-fixes")
    assert done.returncode == 0 and "GF006" in done.stdout, done.stdout + done.stderr
    for batch, t in ((1, 21), (2, 40), (3, 64)):
        x = torch.randn(batch, t, 16)
        with torch.no_grad():
            want = module(x).numpy()
        np.testing.assert_allclose(run(str(tmp_path / "out.onnx"), {"x": x.numpy()})[0], want, rtol=1e-4, atol=1e-5)


class Queries(nn.Module):
    """Healthy (helper 37): a DETR-style decoder step, 16 learned queries attending over the input, the target
    `zeros_like(queries)`; exported at T = 16, as many frames as queries. The TorchScript export of the attention
    bakes a Reshape with the queries' 16, which says T was 16: the zeros alone would look like `zeros(int(T))`,
    but the attention's output holds the 16 too, through learned weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.queries = nn.Linear(16, 8), nn.Parameter(torch.randn(16, 8))
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        memory = self.lin(x)
        queries = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        target = torch.zeros_like(queries)
        return target + self.attn(target + queries, memory, memory)[0]


def test_learned_queries_as_many_as_the_export_frames_are_written(tmp_path):
    path = export(Queries(), tmp_path / "queries.onnx", t=16)
    assert [f for f in findings(path) if f.severity.value == "error"] == []
    assert repair(path, tmp_path / "out.onnx").returncode == 0


def test_a_derived_export_size_is_named_with_the_length_it_gives(tmp_path):
    found = findings(export(ConvFrames(expand=True), tmp_path / "conv.onnx"))
    assert "T=40 gives the export's floor(T/2) - 1 = 19" in found[0].message, found
    assert "Expand" in found[0].message and "expand(-1, int(T), -1)" in found[0].message


def test_a_size_one_step_from_the_export_size_is_an_error(tmp_path):
    """`ones(int(T) - 1, 8)` (helper 37's `tm1`, written wrong with exit 0): 39 is T - 1 with T = 40 at export."""
    path = export(Frames(drop=1), tmp_path / "m1.onnx")
    found = findings(path)
    assert [f.severity.value for f in found] == ["error"], found
    assert "39 = T - 1, T=40 at export" in found[0].message
    assert repair(path, tmp_path / "out.onnx").returncode == 1 and not (tmp_path / "out.onnx").exists()


def test_a_size_no_input_had_at_export_is_a_warning(tmp_path):
    """`ones(int(T) - 3, 8)`: 37, which the graph ties to no input's export size (a model may keep 37 slots): a
    warning."""
    found = findings(export(Frames(drop=3), tmp_path / "m3.onnx"))
    assert [f.severity.value for f in found] == ["warning"], found
    assert "no input dim's export size is known to be 37" in found[0].message


class Slots(nn.Module):
    """Healthy: 40 learned slots added to a pooled frame (the output is 40 long in PyTorch too), exported at T = 40
    with the output axis declared dynamic."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.slots = nn.Linear(16, 8), nn.Parameter(torch.randn(40, 8))

    def forward(self, x):
        return self.lin(x).mean(1, keepdim=True) + self.slots


def test_learned_slots_as_long_as_the_export_size_are_a_warning_and_written(tmp_path):
    path = export(Slots(), tmp_path / "slots.onnx")
    found = findings(path, trace_shapes={"x": (2, 40, 16)})  # T = 40 known: the values do not follow from a size
    assert [f.severity.value for f in found] == ["warning"], found
    assert "do not follow from its size" in found[0].message
    assert repair(path, tmp_path / "out.onnx").returncode == 0


class SetHead(Frames):
    """Healthy (helper 38): a pooled frame spread over 16 learned slots, exported at T = 16, where a Reshape baked
    with int(T) tells the graph T was 16. The learned table of 16 rows says 16 is the model's own."""

    def __init__(self):
        super().__init__()
        self.slots = nn.Parameter(torch.randn(16, 8))

    def forward(self, x):
        h = self.lin(x)
        t = int(h.shape[1])
        g = h.reshape(h.shape[0], t, 4, 8).mean(2)
        return h.mean(1, keepdim=True)[..., :8].expand(-1, 16, -1) + self.slots + g[:, :1]


def test_a_spread_beside_a_learned_table_of_as_many_rows_is_no_error(tmp_path):
    path = export(SetHead(), tmp_path / "set.onnx", t=16)
    assert [f for f in findings(path) if f.severity.value == "error"] == []
    done = repair(path, tmp_path / "out.onnx")  # GF004 repairs the Reshape; the slots stay 16
    assert done.returncode == 0, done.stdout + done.stderr


class Healthy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(16, 8)

    def forward(self, x):
        h = self.lin(x)
        return h + torch.ones(1, 8) + h.mean(1, keepdim=True).expand(-1, x.shape[1], -1)


def test_an_output_that_follows_its_input_gets_nothing(tmp_path):
    assert findings(export(Healthy(), tmp_path / "healthy.onnx")) == []


def graph(nodes, out_shape, initializers=()):
    return helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], list(initializers)),
        opset_imports=[helper.make_opsetid("", 17)])


def test_the_walk_follows_transpose_and_tile_and_says_where_it_stops(tmp_path):
    """Through a Transpose to ConstantOfShape's shape, through a Relu to Tile's repeats (an error needs an export
    size, or a length whose export size is not known: x has only a batch, so here warnings); a Concat is not
    followed: nothing is found, and the walk names where it stopped."""
    fill = helper.make_tensor("shape", TensorProto.INT64, [3], [2, 8, 40])
    zeros = [helper.make_node("ConstantOfShape", ["shape"], ["z"]),
             helper.make_node("Transpose", ["z"], ["y"], perm=[0, 2, 1])]
    onnx.save(graph(zeros, [2, "frames", 8], [fill]), tmp_path / "zeros.onnx")
    reps = helper.make_tensor("reps", TensorProto.INT64, [3], [1, 40, 1])
    tiled = [helper.make_node("Tile", ["x", "reps"], ["t"]), helper.make_node("Relu", ["t"], ["y"])]
    onnx.save(graph(tiled, ["B", "frames", 8], [reps]), tmp_path / "tile.onnx")
    for name, op in (("zeros", "ConstantOfShape"), ("tile", "Tile")):
        found = findings(tmp_path / f"{name}.onnx")
        assert [f.severity.value for f in found] == ["warning"] and op in found[0].message, found
    rest = helper.make_tensor("rest", TensorProto.FLOAT, [1, 39, 8], [0.0] * 39 * 8)
    joined = graph([helper.make_node("Concat", ["x", "rest"], ["y"], axis=1)], ["B", "frames", 8], [rest])
    onnx.save(joined, tmp_path / "concat.onnx")
    assert findings(tmp_path / "concat.onnx") == []
    sizes, g = static_sizes(joined)
    assert held_by(sizes, g.outputs[0], 1) == "it stops at Concat '', an op the walk does not follow"
