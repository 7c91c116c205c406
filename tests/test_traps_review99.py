"""Traps from red team 99: a baked size that the echo check did not read, and a repeat count it guessed.

`t = int(x.shape[1])` pins a head split's Reshape (GF004 rebuilds the entry, safe) and is baked again as a Pad's
amounts (`F.pad(h, (0, 0, 0, t))`, by `t - 1` before a Conv1d, by `t // 2` on both sides), a Resize's output size
(`interpolate(size=2 * t)`), an entry of the shape of zeros concatenated to the frames (`h.new_zeros(B, t, D)`) or
the start of a tail longer than five frames (`h[:, t - 6:]`). Each was written with exit 0 and wrong at every
other length (57 frames for PyTorch's 40 at T = 20); now each is read as an echo (graphfix.analysis.int_echoes)
and the repair refuses by default (exit 1, nothing written). The controls, the model's own numbers in the same
places, are still repaired (the suite's guard compares each written model with the module at other lengths); a
resize to the model's own 16 frames was one, until red team 113's `int(t * 1.5)` (test_traps_review113).

A length cut to a table before the head split (`ids[:, :64]`, BERT-style truncation) left the Reshape's element
count `8*B*Min(64, T)`, which the size analysis did not solve: no fix, `repair` exit 1 on a model whose entry is
the cut length. The cap is read as a derived length now, as a strided Conv's frames are: repaired, and matching
PyTorch past the cap.

An RNN's initial state `zeros(L, int(B), H)`, which the TorchScript exporter writes as `Expand(zeros[L, 2, H],
[L, B, H])`, was not repaired (GF006 read the constants of broadcasting ops only): exit 1 on a model that the
README's own table repairs safely. The data of an Expand is read too now, shrunk where uniform.

GF002 read 16 repeat counts of 2, cut from a buffer of per-position counts at the export length
(`rep[:int(T)]`, 2 for the first 40 positions, then 1), as one count of 2 for every position, and called the fix
safe: exit 0, 100 frames for PyTorch's 90 at T = 50. Equal counts, one per position of a dynamic axis, are what
`torch.full((T,), 2)` gives too: the fix is unsafe now; along a static axis it stays safe.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from fixtures.baked_heads import repair, trapped  # noqa: E402  (imports torch)
from fixtures.baked_heads import trap as fixture_trap  # noqa: E402
from torch.nn import functional  # noqa: E402

pytestmark = pytest.mark.torch
LENGTH = 37
COUNTS = torch.tensor([2] * 40 + [1] * 100)  # per-position repeat counts: 2 for the first 40 positions, then 1


def _conv_after_left_pad(self, h, t):
    """A causal Conv1d's left pad, written with the length by mistake."""
    return functional.conv1d(functional.pad(h.transpose(1, 2), (t - 1, 0)), torch.ones(8, 8, 3) / 24).transpose(1, 2)


TRAPS = {
    "pad-by-t": (lambda self, h, t: functional.pad(h, (0, 0, 0, t)), False),
    "left-pad-by-t-minus-1": (_conv_after_left_pad, True),
    "pad-half-both-sides": (lambda self, h, t: functional.pad(h, (0, 0, t // 2, t // 2)), True),
    "resize-to-twice": (lambda self, h, t: functional.interpolate(h.transpose(1, 2), size=2 * t), False),
    "zeros-concatenated": (lambda self, h, t: torch.cat([h, h.new_zeros(h.shape[0], t, 8)], 1), True),
    "tail-from-t-minus-6": (lambda self, h, t: h[:, t - 6:].mean(1), False),
    "tail-from-t-minus-9": (lambda self, h, t: h[:, t - 9:].mean(1), False),
    # helper 100: a zeros entry of another form than t itself (the zeros' own dim is the entry), and a pad whose
    # tuple mixes the baked int with a size read from the shape (concatenated, then reordered by the exporter)
    "zeros-of-half": (lambda self, h, t: torch.cat([h, h.new_zeros(h.shape[0], t // 2, 8)], 1), True),
    "zeros-of-twice": (lambda self, h, t: torch.cat([h, h.new_zeros(h.shape[0], 2 * t, 8)], 1), True),
    "pad-mixed-with-a-size": (lambda self, h, t: functional.pad(h, (0, 0, t // 2, h.shape[1] // 2)), True),
    "repeat-counts-after-the-head-split": (lambda self, h, t: torch.repeat_interleave(h, COUNTS[:t], 1), True),
}
CONTROLS = {
    "own-causal-pad": (lambda self, h, t: functional.pad(h, (0, 0, 3, 0)), True),  # 3 is no form of 37
    "own-prefix-zeros": (lambda self, h, t: torch.cat([h.new_zeros(h.shape[0], 4, 8), h], 1), True),
    "own-tail": (lambda self, h, t: h[:, 20:].mean(1), False),  # 37 - 17: more than a quarter of the length
    # helper 101: 12 register tokens and a causal pad of 9 are 37 // 3 and 37 // 4, forms of a cut, not of a size
    "own-register-tokens": (lambda self, h, t: torch.cat([h.new_zeros(h.shape[0], 12, 8), h], 1), True),
    "own-causal-pad-of-a-quarter": (lambda self, h, t: functional.pad(h, (0, 0, 9, 0)), True),
}


@pytest.mark.parametrize("trap", TRAPS.values(), ids=TRAPS)
def test_a_size_baked_beside_a_safe_fix_as_a_pad_a_resize_a_shape_or_a_tail_makes_it_unsafe(tmp_path, trap):
    done, out = trapped(fixture_trap("Trap", *trap)(), tmp_path / "m.onnx", LENGTH)
    assert done.exit_code == 1 and not out.exists(), done.output
    assert ("which is" in done.output and "export at a size" in done.output) or "cut to the length" in done.output, \
        done.output


@pytest.mark.parametrize("name", CONTROLS)
def test_a_models_own_pad_resize_zeros_or_tail_is_no_echo(tmp_path, name):
    done, out = trapped(fixture_trap("Control", *CONTROLS[name])(), tmp_path / "m.onnx", LENGTH)
    assert done.exit_code == 0 and out.exists(), done.output


class CountsPerPosition(torch.nn.Module):
    """Per-position repeat counts from a buffer, cut to the length with an int: 2 for the first 40, then 1."""

    def __init__(self):
        super().__init__()
        self.register_buffer("rep", torch.tensor([2] * 40 + [1] * 100))

    def forward(self, x):
        return torch.repeat_interleave(x, self.rep[: int(x.shape[1])], dim=1)


class CountsPerChannel(torch.nn.Module):
    """Equal counts along a static axis of 3 channels: one count, whatever the length."""

    def forward(self, x):
        return torch.repeat_interleave(x, torch.tensor([2, 2, 2]), dim=1)


def _export(module, example, path, axes):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes=axes)
    return path


def test_equal_repeat_counts_one_per_position_of_a_dynamic_axis_are_no_single_count(tmp_path):
    path = _export(CountsPerPosition(), torch.randn(2, 16, 8), tmp_path / "m.onnx", {"x": {0: "B", 1: "T"},
                                                                                      "y": {0: "B", 1: "F"}})
    module, longer = CountsPerPosition(), torch.randn(2, 50, 8)
    assert module(longer).shape[1] == 90  # 40 positions twice, 10 once: one count of 2 would give 100
    done, out = repair(path)
    assert done.exit_code == 1 and not out.exists(), done.output
    assert "GF002" in done.output and "cut to the length" in done.output, done.output


def test_equal_repeat_counts_along_a_static_axis_are_one_count(tmp_path):
    """The fix alone (the proof's take on this export is another matter: the unrolled form bakes the length too)."""
    import onnx
    import onnxruntime as ort

    import graphfix
    from graphfix.core.rule import Safety

    path = _export(CountsPerChannel(), torch.randn(2, 3, 16), tmp_path / "m.onnx", {"x": {0: "B", 2: "T"},
                                                                                     "y": {0: "B", 2: "T"}})
    result = graphfix.repair(onnx.load(str(path)), validate=False, simplify=False, only=("GF002",))
    [finding] = result.before.findings
    assert finding.fix.safety is Safety.SAFE and [a.rule for a in result.applied] == ["GF002"], finding
    x = np.random.default_rng(0).standard_normal((3, 3, 21)).astype(np.float32)
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], CountsPerChannel()(torch.from_numpy(x)).numpy())


class TruncatedHeads(torch.nn.Module):
    """Token and position embeddings (64 positions), the tokens cut to 64 first, then the `int()` head split."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.pos, self.lin = torch.nn.Embedding(50, 8), torch.nn.Embedding(64, 8), torch.nn.Linear(8, 8)

    def forward(self, ids):
        ids = ids[:, :64]
        t = ids.shape[1]
        h = self.emb(ids) + self.pos(torch.arange(t))
        return self.lin(h).reshape(ids.shape[0], int(t), 2, 4).transpose(1, 2).reshape(ids.shape[0], 2, -1)


def test_a_length_cut_to_a_table_before_a_baked_head_split_is_repaired(tmp_path):
    import warnings

    import onnxruntime as ort

    module, path = TruncatedHeads().eval(), tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randint(0, 50, (2, 37)),), str(path), dynamo=False, opset_version=17,
                          input_names=["ids"], output_names=["y"],
                          dynamic_axes={"ids": {0: "B", 1: "T"}, "y": {0: "B", 2: "L"}})
    done, out = repair(path)
    assert done.exit_code == 0 and "Min(64, T)" in done.output, done.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch, length in ((2, 20), (2, 64), (1, 80)):
        ids = torch.randint(0, 50, (batch, length))
        with torch.no_grad():
            np.testing.assert_allclose(session.run(None, {"ids": ids.numpy()})[0], module(ids).numpy(), rtol=1e-4,
                                       atol=1e-5)


class InitialStates(torch.nn.Module):
    """A GRU and a two-layer bidirectional LSTM started from zeros whose batch went through `int()`."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gru = torch.nn.GRU(8, 8, batch_first=True)
        self.lstm = torch.nn.LSTM(8, 4, num_layers=2, bidirectional=True, batch_first=True)

    def forward(self, x):
        batch = int(x.shape[0])
        h, _ = self.gru(x, torch.zeros(1, batch, 8))
        y, _ = self.lstm(h, (torch.zeros(4, batch, 4), torch.zeros(4, batch, 4)))
        return y


def test_an_rnn_s_initial_state_of_a_baked_batch_is_repaired(tmp_path):
    import onnxruntime as ort

    module = InitialStates().eval()
    path = _export(module, torch.randn(2, 16, 8), tmp_path / "m.onnx", {"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}})
    done, out = repair(path)
    assert done.exit_code == 0 and "GF006" in done.output, done.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch, length in ((1, 10), (3, 16), (5, 7)):
        x = torch.randn(batch, length, 8)
        with torch.no_grad():
            np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], module(x).numpy(), rtol=1e-4,
                                       atol=1e-5)


class CutByAnother(torch.nn.Module):
    """`x` cut to the length of `y` through `int()` (50 at export), then the baked head split: `Min(50, T)` is no
    cap of the model's (50 is no table's rows), and rebuilding the entry as it was wrong past 50 (helper 101)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x, y):
        h = self.lin(x[:, : int(y.shape[1])])
        return h.reshape(h.shape[0], int(h.shape[1]), 2, 4).sum(1) + y.mean(1, keepdim=True)


def test_a_length_cut_to_another_input_s_baked_length_is_no_cap(tmp_path):
    import warnings

    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(CutByAnother().eval(), (torch.randn(2, 37, 8), torch.randn(2, 50, 1)), str(path),
                          dynamo=False, opset_version=17, input_names=["x", "y"], output_names=["z"],
                          dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "S"}, "z": {0: "B"}})
    done, _ = repair(path)
    assert done.exit_code == 1 and "Min(50, T)" not in done.output, done.output


class GroupedHeads(torch.nn.Module):
    """Grouped-query attention: 3 key heads split off inside the model, repeated for 6 query heads by equal
    per-head counts."""

    def forward(self, q, k):
        keys = k.view(k.shape[0], k.shape[1], 3, 8).transpose(1, 2)
        return q @ torch.repeat_interleave(keys, torch.tensor([2, 2, 2]), dim=1).transpose(-1, -2)


def test_equal_repeat_counts_along_heads_are_one_count_whatever_the_length():
    """3 heads at T = 37 is no size the export baked (helper 101: 4 heads refused): the fix stays safe."""
    import io
    import warnings

    import onnx

    import graphfix
    from graphfix.core.rule import Safety

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(GroupedHeads().eval(), (torch.randn(2, 6, 37, 8), torch.randn(2, 37, 24)), buffer,
                          dynamo=False, opset_version=17, input_names=["q", "k"], output_names=["s"],
                          dynamic_axes={"q": {0: "B", 2: "T"}, "k": {0: "B", 1: "T"}})
    result = graphfix.repair(onnx.load_from_string(buffer.getvalue()), validate=False, simplify=False,
                             only=("GF002",))
    [finding] = result.before.findings
    assert finding.fix.safety is Safety.SAFE, finding
