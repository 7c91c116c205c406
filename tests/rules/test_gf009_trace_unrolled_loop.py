"""GF009 on recurrent loops that the TorchScript exporter unrolled for the export length: speechbrain's own CRDNN
(its LiGRU iterates over time in Python) and a hand-written GRU cell loop are errors that `diagnose` names and
`repair` refuses; torch.nn.GRU, a loop over a fixed axis, and a few single steps of a dynamic one are quiet."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import onnxruntime as ort
import pytest

import graphfix

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

FEATURES = 6


class CellLoop(torch.nn.Module):
    """A recurrent cell stepped over time in Python, as custom recurrent layers do; each step read as `x[:, t]`,
    from the end (`x[:, -1 - t]`), or as a slice of one step (`x[:, t:t + 1]`)."""

    def __init__(self, read: str = "index"):
        super().__init__()
        self.read, self.inward, self.recurrent = read, torch.nn.Linear(FEATURES, 8), torch.nn.Linear(8, 8)

    def cell(self, step, h):
        return torch.tanh(self.inward(step) + self.recurrent(h))

    def step(self, x, t: int):
        if self.read == "from end":
            return x[:, -1 - t]
        return x[:, t:t + 1].squeeze(1) if self.read == "slice" else x[:, t]

    def forward(self, x):
        h = torch.zeros(x.shape[0], 8)
        steps = []
        for t in range(x.shape[1]):
            h = self.cell(self.step(x, t), h)
            steps.append(h)
        return torch.stack(steps, dim=1)


class LibraryGRU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(FEATURES, 8, batch_first=True)

    def forward(self, x):
        return self.gru(x)[0]


class HeadLoop(torch.nn.Module):
    """A loop over a fixed axis (4 heads): unrolled too, and right at every length."""

    def forward(self, x):
        heads = x.reshape(x.shape[0], x.shape[1], 2, 3).transpose(1, 2).repeat(1, 2, 1, 1)  # [B, 4, T, 3]
        return torch.cat([heads[:, h] * (h + 1) for h in range(heads.shape[1])], dim=-1)


class EdgeFrames(torch.nn.Module):
    """Three single frames of a dynamic axis: the model's own choice, not a loop."""

    def forward(self, x):
        return x[:, 0] + x[:, 1] - x[:, 2]


class FinalState(CellLoop):
    """The same loop returning its last state only: nothing in the graph says how long the export was."""

    def forward(self, x):
        return super().forward(x)[:, -1]


class TaskTokens(torch.nn.Module):
    """4 learned tokens before a dynamic sequence, mixed with it by attention, each read by its own head: 4 single
    steps of a dynamic axis, healthy at every length (the axis is time + 4)."""

    def __init__(self):
        super().__init__()
        self.tokens = torch.nn.Parameter(torch.randn(1, 4, FEATURES))
        self.mix = torch.nn.Linear(FEATURES, FEATURES)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(FEATURES, 3) for _ in range(4))

    def forward(self, x):
        h = torch.cat([self.tokens.expand(x.shape[0], -1, -1), x], 1)
        h = h + torch.softmax(h @ self.mix(h).transpose(1, 2), -1) @ h
        return torch.stack([head(h[:, i]) for i, head in enumerate(self.heads)], 1)


def export(module, path, length: int = 12, steps_out: bool = False) -> None:
    """Dynamic batch and time; `steps_out`: the output's second axis declared dynamic too (one step per frame)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, length, FEATURES),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "time"},
                                        "y": {0: "batch", 1: "time"} if steps_out else {0: "batch"}})


def errors(path, **trace):
    return [f for f in graphfix.diagnose(path, static=True, trace_shapes=trace) if f.severity.value == "error"]


def gf009(path, **trace):
    return [f for f in graphfix.diagnose(path, static=True, trace_shapes=trace) if f.rule == "GF009"]


@pytest.mark.parametrize("read", ["index", "from end", "slice"])
def test_a_cell_loop_unrolled_at_export_is_an_error_where_the_export_shape_is_known(tmp_path, read):
    path = tmp_path / "loop.onnx"
    export(CellLoop(read), path, length=12, steps_out=True)  # declared [batch, time, 8]; the graph returns 12 steps
    x = np.random.default_rng(0).standard_normal((1, 20, FEATURES)).astype(np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert y.shape[1] == 12  # 20 frames in, 12 out: what the finding says

    [finding] = errors(path, x=(2, 12, FEATURES))
    assert finding.rule == "GF009" and "unrolled for 12 steps" in finding.message and "time" in finding.message
    assert len(finding.nodes) == 12 and finding.fix is None
    [looped] = gf009(path)  # the graph alone: each step's state goes into the next
    assert looped.severity.value == "error" and "goes into the next, transformed" in looped.message
    out = tmp_path / "out.onnx"
    done = subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(out),
                           "--trace-shape", f"x=2x12x{FEATURES}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "GF009" in done.stdout, done.stdout + done.stderr
    assert not out.exists()


class Bidirectional(CellLoop):
    """Forward over x[:, t], backward over x[:, -1 - t], and one more read of the last step."""

    def forward(self, x):
        h = g = torch.zeros(x.shape[0], 8)
        for t in range(x.shape[1]):
            h, g = self.cell(x[:, t], h), self.cell(x[:, -1 - t], g)
        return h + g + self.inward(x[:, -1])


class Lags(torch.nn.Module):
    """An AR(4) forecaster: the last 4 lags of a history of any length, read one by one; its output's dims are
    named by the exporter (`Reshapey_dim_1`), and one of them is 4."""

    def __init__(self):
        super().__init__()
        self.taps = torch.nn.Linear(4 * FEATURES, 8)

    def forward(self, x):
        y = self.taps(torch.cat([x[:, -k] for k in range(1, 5)], dim=-1))
        return y.view(x.shape[0], -1, 2)


def test_both_directions_of_a_loop_are_read_apart(tmp_path):
    path = tmp_path / "bidirectional.onnx"
    export(Bidirectional(), path, length=5)
    found = errors(path, x=(2, 5, FEATURES))
    assert sorted(len(f.nodes) for f in found if f.rule == "GF009") == [5, 5]  # the extra read of step -1 aside


def test_the_last_lags_read_one_by_one_are_no_error(tmp_path):
    """Found by a review: the exporter's own name for an output dim was taken for a dim the user declared
    dynamic, and the lags for a loop (repair refused a healthy model)."""
    path = tmp_path / "lags.onnx"
    export(Lags(), path, length=12)
    assert errors(path) == [] and gf009(path, x=(2, 12, FEATURES)) == []
    done = subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(tmp_path / "o.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


class FrameLoop(torch.nn.Module):
    """A head applied to each frame in a Python loop, the frames stacked and pooled: unrolled, but no state goes
    from one step to the next."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(FEATURES, 3)

    def forward(self, x):
        return torch.stack([self.head(x[:, t]) for t in range(x.shape[1])], 1).sum(1)


class GatedScan(torch.nn.Module):
    """A selective scan (as Mamba's or RecurrentGemma's reference loops): the gates computed from the whole input
    first, a body of elementwise ops only, each step read as a one-step slice (Slice clamps: shorter inputs do not
    fail in onnxruntime, they read fewer steps)."""

    def __init__(self):
        super().__init__()
        self.gate, self.value = torch.nn.Linear(FEATURES, 8), torch.nn.Linear(FEATURES, 8)

    def forward(self, x):
        a, b = torch.sigmoid(self.gate(x)), self.value(x)
        h = torch.zeros(x.shape[0], 1, 8)
        for t in range(x.shape[1]):
            h = a[:, t:t + 1] * h + b[:, t:t + 1]
        return h.squeeze(1)


class Decay(torch.nn.Module):
    """A learned exponential moving average: its one weight has a single value."""

    def __init__(self):
        super().__init__()
        self.alpha = torch.nn.Parameter(torch.tensor(0.7))

    def forward(self, x):
        h = torch.zeros(x.shape[0], FEATURES)
        for t in range(x.shape[1]):
            h = self.alpha * h + (1 - self.alpha) * x[:, t]
        return h


class SummedTaps(torch.nn.Module):
    """A forecaster summing its own tap of each of the last 4 lags (Python's sum: a chain of Adds): healthy at
    every history length."""

    def __init__(self):
        super().__init__()
        self.taps = torch.nn.ModuleList(torch.nn.Linear(FEATURES, 8) for _ in range(4))

    def forward(self, x):
        return sum(tap(x[:, -1 - k]) for k, tap in enumerate(self.taps))


class SharedHeadSlots(torch.nn.Module):
    """4 slot tokens at the start of every input, mixed with the rest by attention, each read by one shared head:
    healthy at every length (found by a review: a rule of "the same weights at every step" refused it)."""

    def __init__(self):
        super().__init__()
        self.mix, self.head = torch.nn.Linear(FEATURES, FEATURES), torch.nn.Linear(FEATURES, 3)

    def forward(self, x):
        h = x + torch.softmax(x @ self.mix(x).transpose(1, 2), -1) @ x
        return torch.stack([self.head(h[:, i]) for i in range(4)], 1)


class SubsampledTokens(TaskTokens):
    """A stride-2 Conv front end (3 frames at least), then the task tokens: the axis is floor((T - 3) / 2) + 5,
    4 at T = 1, which the model does not take (found by a review: taken for a length the axis can have)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(FEATURES, FEATURES, 3, stride=2)

    def forward(self, x):
        return super().forward(self.conv(x.transpose(1, 2)).transpose(1, 2))


@pytest.mark.parametrize(("module", "length"), [(FinalState, 12), (FinalState, 4), (GatedScan, 20), (Decay, 6)],
                         ids=["final-state-12", "final-state-4", "gated-scan-20", "decay-6"])
def test_a_state_carried_over_the_steps_is_an_error_from_the_graph_alone(tmp_path, module, length):
    """The last state only, so nothing in the graph says how long the export was; but each step's state goes into
    the next, transformed. Exported at 4 or 6 frames, no probe goes below the loop's length; the scan's slices
    clamp at any length: every probe ran, and repair wrote models wrong at every other length with exit 0 (found
    by reviews)."""
    path = tmp_path / "final.onnx"
    export(module(), path, length=length)
    found = errors(path)  # the scan reads two tensors step by step: its gates and its values
    assert len(found) == 1 + (module is GatedScan) and all(f.rule == "GF009" for f in found)
    finding = found[0]
    assert f"unrolled for {length} steps" in finding.message
    assert "goes into the next, transformed" in finding.message and "--trace-shape" in finding.message
    assert not gf009(path, x=(2, length + 4, FEATURES))  # a longer export: steps read by design, no loop
    out = tmp_path / "out.onnx"
    done = subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "GF009" in done.stdout and not out.exists(), done.stdout + done.stderr


@pytest.mark.xfail(strict=True, reason="known miss: a loop that carries no state from step to step is only a "
                   "warning where the export's sizes are not known (N frames read by design look the same)")
def test_a_loop_that_carries_no_state_is_an_error(tmp_path):
    path = tmp_path / "m.onnx"
    export(FrameLoop(), path, length=4)
    assert [f.rule for f in errors(path)] == ["GF009"]


@pytest.mark.parametrize("module", [SummedTaps, SharedHeadSlots, SubsampledTokens], ids=lambda m: m.__name__)
def test_steps_read_apart_are_no_error_where_the_export_length_is_not_known(tmp_path, module):
    """Healthy at every length: N steps read apart (summed up, or through one shared head), or steps of an axis
    longer than N at every size the model takes. At most a warning, that --trace-shape settles; repair writes
    them (exit 0)."""
    path = tmp_path / "m.onnx"
    export(module(), path, length=4 if module is SummedTaps else 12)
    assert [f.rule for f in errors(path)] == []
    assert all(f.severity.value == "warning" for f in gf009(path))
    if module is SummedTaps:
        assert [f.severity.value for f in gf009(path, x=(2, 4, FEATURES))] == ["error"]
        assert not gf009(path, x=(2, 9, FEATURES))
    done = subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(tmp_path / "o.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_single_steps_of_an_axis_longer_at_export_are_no_loop(tmp_path):
    """Found by a review: the task tokens were refused (GF009 error) though healthy at every length."""
    path = tmp_path / "tokens.onnx"
    export(TaskTokens(), path, length=12)
    assert [f.rule for f in errors(path)] == []
    assert not [f for f in graphfix.diagnose(path, static=True, trace_shapes={"x": (2, 12, FEATURES)})
                if f.rule == "GF009"]  # time + 4 = 16 at export: 4 of its steps are read, not all
    done = subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(tmp_path / "o.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("module", [LibraryGRU, HeadLoop, EdgeFrames], ids=lambda m: m.__name__)
def test_what_no_loop_over_a_dynamic_axis_made_is_quiet(tmp_path, module):
    path = tmp_path / "m.onnx"
    export(module(), path)
    assert [f.rule for f in errors(path)] == []
    result = graphfix.repair(path)
    rejected = [r.reason for r in result.before.rejections if r.rule == "GF009"]
    assert result.status == "unchanged" and not result.error, result.error
    assert rejected == [] or (module is HeadLoop and "a loop over a fixed axis" in rejected[0]), rejected


def test_speechbrain_crdnn_with_its_ligru_is_an_error_that_diagnose_names(tmp_path):
    """speechbrain's CRDNN, whose LiGRU iterates over time in Python: before GF009, `diagnose` took its failures
    below the export length for the model's minimum length and said nothing. `repair` refuses it either way (its
    probes below 20 frames fail)."""
    pytest.importorskip("speechbrain")
    from fixtures.library_models import import_torchaudio

    import_torchaudio()
    from speechbrain.lobes.models.CRDNN import CRDNN

    torch.manual_seed(0)
    module = CRDNN(input_shape=[None, None, 20], cnn_blocks=1, cnn_channels=(8,), cnn_kernelsize=(3, 3),
                   time_pooling=False, rnn_layers=1, rnn_neurons=16, rnn_bidirectional=False, dnn_blocks=1,
                   dnn_neurons=16).eval()
    path = tmp_path / "crdnn.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 20, 20),), str(path), dynamo=False, opset_version=17,
                          input_names=["feats"], output_names=["out"],
                          dynamic_axes={"feats": {0: "batch", 1: "time"}, "out": {0: "batch", 1: "out_time"}})
    def diagnose(*args):
        return subprocess.run([sys.executable, "-m", "graphfix", "diagnose", str(path), *args], capture_output=True,
                              text=True, timeout=300)

    done = diagnose()  # the graph alone: its LiGRU carries a state from each step to the next
    assert done.returncode == 1 and "error GF009" in done.stdout, done.stdout + done.stderr
    assert "unrolled for 20 steps" in done.stdout and "goes into the next, transformed" in done.stdout
    done = diagnose("--static", "--trace-shape", "feats=2x20x20")
    assert done.returncode == 1 and "error GF009" in done.stdout, done.stdout + done.stderr


def hand_written_loop(layout: str):
    """`h = tanh(x[:, t] @ W + h)` for 6 steps, written by hand: in order, in reverse order (onnxruntime runs an
    unsorted graph), or with each step's MatMul inside an If's branches (a scripted cell: the branch reads the
    step and W from the outer graph)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    for t in range(6):
        step = [helper.make_node("Gather", ["x", f"i{t}"], [f"s{t}"], axis=1)]
        if layout == "if-branch":
            branch = [helper.make_graph([helper.make_node("MatMul", [f"s{t}", "W"], [f"{b}{t}"])], f"{b}{t}", [],
                                        [helper.make_tensor_value_info(f"{b}{t}", TensorProto.FLOAT, None)])
                      for b in ("then", "else")]
            step.append(helper.make_node("If", ["cond"], [f"m{t}"], then_branch=branch[0], else_branch=branch[1]))
        else:
            step.append(helper.make_node("MatMul", [f"s{t}", "W"], [f"m{t}"]))
        step += [helper.make_node("Add", [f"m{t}", f"h{t}"], [f"a{t}"]),
                 helper.make_node("Tanh", [f"a{t}"], [f"h{t + 1}"])]
        nodes += step
    weights = [numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32), "W"),
               numpy_helper.from_array(np.array(True), "cond"),
               *(numpy_helper.from_array(np.array(t, np.int64), f"i{t}") for t in range(6))]
    graph = helper.make_graph(nodes[::-1] if layout == "reversed" else nodes, "loop",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", 4]),
                               helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("h6", TensorProto.FLOAT, ["batch", 4])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("layout", ["in-order", "reversed", "if-branch"])
def test_a_hand_written_loop_is_found_in_any_node_order_and_through_a_branch(tmp_path, layout):
    """Found by a review: a graph in reverse order, or a cell inside an If, was a warning (the walk took the
    nodes in file order, and an If's branches read outer tensors that are not its inputs)."""
    import onnx

    path = tmp_path / "loop.onnx"
    onnx.save(hand_written_loop(layout), path)
    assert [(f.rule, len(f.nodes)) for f in errors(path)] == [("GF009", 6)]
