"""graphfix.exporting.refit: constants that move between traces of the module, rebuilt from the input's shape.

The graph alone cannot say which of its constants follow the input (tests/frontends/test_patch_grid_ambiguity.py:
two designs, one graph); traces of the module at other sizes can. Each case is checked by our own comparison,
onnxruntime against the module at sizes no trace and no proof used.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import graphfix  # noqa: E402
from graphfix.exporting.refit import refit  # noqa: E402
from graphfix.exporting.verify import named_dims, sized_call  # noqa: E402

pytestmark = [pytest.mark.torch]


class PatchCount(torch.nn.Module):
    """MobileViT's unfold and fold: 2x2 patches, their count from the size (`math.ceil`)."""

    def forward(self, x):
        b, c, h, w = x.shape
        return _mix(x, b, c, math.ceil(h / 2), 2, math.ceil(w / 2), 2)


class FixedGrid(torch.nn.Module):
    """A fixed 4x6 grid of patches whose size follows the input: the same graph as PatchCount at 8x12."""

    def forward(self, x):
        b, c, h, w = x.shape
        return _mix(x, b, c, 4, int(h) // 4, 6, int(w) // 6)


def _mix(x, b, c, n_h, p_h, n_w, p_w):
    patches = x.reshape(b * c * n_h, p_h, n_w, p_w).transpose(1, 2)
    patches = patches.reshape(b, c, n_h * n_w, p_h * p_w).transpose(1, 3)
    mixed = patches - patches.mean(dim=2, keepdim=True) * 0.5
    folded = mixed.transpose(1, 3).reshape(b * c * n_h, n_w, p_h, p_w).transpose(1, 2)
    return folded.reshape(b, c, n_h * p_h, n_w * p_w)


class StridedFrames(torch.nn.Module):
    """Every third frame, flattened with the frame count computed in Python: ceil(T / 3), which is T // 3 at the
    export length 9 and at every multiple of 3 (the obvious repair, wrong at 10 and 11)."""

    def forward(self, x):
        b, t, f = x.shape
        return x[:, ::3].reshape(b, math.ceil(t / 3) * f) * 2.0


class ValueLength(torch.nn.Module):
    """A width taken from the values (`.item()`): it moves between traces as no size does."""

    def forward(self, x):
        width = int(x[0, :, 0].abs().argmax().item()) + 1
        return x[:, :width].sum(dim=1)


class OnesOffset(torch.nn.Module):
    """`torch.ones(int(T) - 3, 8)` beside a pooled row: the trace folds a [37, 8] table of ones (GF010's case with
    an offset `repair` cannot tie to T: a warning there, and the graph alone cannot say it grows)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x).mean(1, keepdim=True) + torch.ones(int(x.shape[1]) - 3, 8)


class Positions(torch.nn.Module):
    """Positions `arange(int(T))` added to every frame: a table 0, 1, ..., T - 1 the trace folds."""

    def forward(self, x):
        return x + torch.arange(int(x.shape[1])).float()[None, :, None] * 0.5


class Stamps(torch.nn.Module):
    """Time stamps `arange(int(T)) * 0.9`: a float arange whose step no power of two is (a float Range's length
    is one too many at some lengths, helper 43)."""

    def forward(self, x):
        return x + (torch.arange(int(x.shape[1])) * 0.9)[None, :, None]


def _independent_ok(path, module, shapes) -> bool:
    """onnxruntime against the module, sharing no code with graphfix."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in shapes:
        x = torch.randn(*shape)
        try:
            got = session.run(None, {"x": x.numpy()})[0]
        except Exception:
            return False
        with torch.no_grad():
            want = module(x).numpy()
        if got.shape != want.shape or not np.allclose(got, want, atol=1e-5):
            return False
    return True


IMAGE_AXES = {"x": {0: "B", 2: "H", 3: "W"}, "y": {0: "B", 2: "H", 3: "W"}}
# inside both designs' domains (even sides; H a multiple of 4, W of 6), and none of them traced or proved
IMAGE_SIZES = ((1, 3, 16, 12), (3, 3, 12, 18), (2, 3, 20, 24))


@pytest.mark.parametrize("design", [PatchCount, FixedGrid])
def test_traces_settle_which_constants_follow_the_input(tmp_path, design):
    """The two designs leave one graph, which `graphfix repair` must refuse; traces of each module at other sizes
    settle it, and each written model matches its own module, the obvious repair (PatchCount's) being wrong for
    FixedGrid."""
    module = design().eval()
    path = tmp_path / "model.onnx"
    report = graphfix.export(module, (torch.randn(2, 3, 8, 12),), path, input_names=["x"], output_names=["y"],
                             dynamic_axes=IMAGE_AXES)
    assert report.ok, report.summary()
    assert report.status == "repaired" and report.refitted, report.summary()
    assert _independent_ok(path, module, IMAGE_SIZES)
    other = FixedGrid() if design is PatchCount else PatchCount()
    assert not _independent_ok(path, other, IMAGE_SIZES)  # the other design's repair would be wrong here


def _traced(module, example, axes, folder):
    """The module exported at the example's sizes, and the trace function refit calls; the sizes it was called
    with are recorded."""
    raw = folder / "raw.onnx"
    kwargs = {"input_names": ["x"], "output_names": ["y"], "dynamic_axes": axes, "dynamo": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(raw), **kwargs)
    exported = onnx.load(str(raw))
    generator = torch.Generator().manual_seed(0)
    asked = []

    def trace(sizes):
        asked.append(dict(sizes))
        path = folder / f"trace{len(asked)}.onnx"
        args, _ = sized_call(exported, ((example,), {}), dict(sizes), generator)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, args, str(path), **kwargs)
        except Exception:
            return None
        return onnx.load(str(path))

    return exported, trace, asked


def test_a_ceiling_is_told_from_a_floor_by_a_trace_where_they_differ(tmp_path):
    module = StridedFrames().eval()
    exported, trace, asked = _traced(module, torch.randn(2, 9, 4), {"x": {0: "B", 1: "T"}, "y": {0: "B"}}, tmp_path)
    proof = [{"B": 4, "T": 18}, {"B": 6, "T": 27}]
    result = refit(exported, named_dims(exported, [(2, 9, 4)]), trace, avoid=proof)
    assert result.model is not None, result.notes
    assert any("ceil(T / 3)" in line for line in result.rebuilt), result.rebuilt
    assert not any(sizes in proof for sizes in asked)  # the proof's sizes stay the proof's evidence
    assert any(sizes["T"] % 3 for sizes in asked)  # a trace where floor and ceil disagree
    onnx.save(result.model, str(tmp_path / "refit.onnx"))
    assert _independent_ok(tmp_path / "refit.onnx", module, ((1, 10, 4), (3, 11, 4), (2, 40, 4)))


def test_a_value_that_moves_as_no_size_does_is_not_rebuilt(tmp_path):
    torch.manual_seed(0)
    module = ValueLength().eval()
    exported, trace, _ = _traced(module, torch.randn(2, 9, 4), {"x": {0: "B", 1: "T"}, "y": {0: "B"}}, tmp_path)
    result = refit(exported, named_dims(exported, [(2, 9, 4)]), trace)
    assert result.model is None
    assert any("moves as no size expression does" in note for note in result.notes), result.notes


@pytest.mark.parametrize("design, rebuilt", [(OnesOffset, "uniform of shape [T - 3, 8]"),
                                             (Positions, "arange of shape [1, T, 1]"),
                                             (Stamps, "arange of shape [1, T, 1]")])
def test_a_table_the_trace_filled_at_its_size_is_regrown(tmp_path, design, rebuilt):
    torch.manual_seed(0)
    module = design().eval()
    path = tmp_path / "model.onnx"
    report = graphfix.export(module, (torch.randn(2, 40, 8),), path, input_names=["x"], output_names=["y"],
                             dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}})
    assert report.ok and any(rebuilt in line for line in report.refitted), report.summary()
    assert _independent_ok(path, module, ((1, 7, 8), (3, 41, 8), (2, 100, 8), *((1, t, 8) for t in range(5, 21))))


class RoundQuarter(torch.nn.Module):
    """The first round(T / 4) frames, Python's rounding half to even (0 at T = 2, 2 at T = 6 and at T = 10): no
    floor `(T + r) // 4` is that, though one agrees at every multiple of 4 and more."""

    def forward(self, x):
        return x[:, :round(int(x.shape[1]) / 4)] * 2.0


class CellsOfArea(torch.nn.Module):
    """The first H * W // 64 cells: (H // 8) * (W // 8) wherever one side stays at 8, as each dim traced alone."""

    def forward(self, x):
        h, w = x.shape[2:]
        return x.flatten(2)[:, :, :int(h) * int(w) // 64] * 2.0


class SmallBranch(torch.nn.Module):
    """`T - T % 4` frames, but all of them below 5: a branch the traces above the export size never take."""

    def forward(self, x):
        t = int(x.shape[1])
        return x[:, :t - t % 4 if t > 4 else t] * 2.0


class MovingScale(torch.nn.Module):
    """Half the frames, scaled by a float that follows the length: the float is no size the graph can rebuild."""

    def forward(self, x):
        t = int(x.shape[1])
        return x[:, :t // 2] * (1.0 if t % 4 == 0 else 0.5)


class LongPeriod(torch.nn.Module):
    """`(3 * T) // 40 + 1` frames: no (T + r) // k, though ceil(T / 13) agrees with it at every size to 52."""

    def forward(self, x):
        return x[:, :(3 * int(x.shape[1])) // 40 + 1] * 2.0


class Groups(torch.nn.Module):
    """Groups of 4 across batch and time, `reshape(B * T // 4, 4, F)`: B * (T // 4) wherever one of them stays at
    its export size, which is all refit traces one dim at a time (helper 43)."""

    def forward(self, x):
        b, t, f = x.shape
        return x.reshape(int(b) * int(t) // 4, 4, f).sum(1)


class ChunkCount(torch.nn.Module):
    """Whole chunks of 48 frames, `ceil(T / 48)` of them, trimmed back to T (chunked local attention): exported
    at 12, one chunk at every size the proof took to 3 times the example's, and `(T + 15) // 64 + 1` agrees with
    the count at every size to 111, past REACH times 12 (helper 160)."""

    def forward(self, x):
        b, t, c = x.shape
        n = math.ceil(int(t) / 48)
        chunks = F.pad(x, (0, 0, 0, 47))[:, :n * 48].reshape(b, n, 48, c)
        return (chunks - chunks.mean(2, keepdim=True)).reshape(b, n * 48, c)[:, :t]

@pytest.mark.parametrize("design, example, axes", [
    (LongPeriod, (2, 8, 4), {"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "N"}}),
    (Groups, (1, 8, 4), {"x": {0: "B", 1: "T"}, "y": {0: "N"}}),
    (RoundQuarter, (2, 8, 4), {"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "N"}}),
    (CellsOfArea, (2, 3, 8, 8), {"x": {0: "B", 2: "H", 3: "W"}, "y": {0: "B", 2: "N"}}),
    (SmallBranch, (2, 8, 4), {"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "N"}}),
    (MovingScale, (2, 8, 4), {"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "N"}}),
])
def test_fits_that_fail_at_a_held_out_size_are_not_kept(tmp_path, design, example, axes):
    """Each fits every trace it was fitted on and the proof's sizes (2x, 3x), and is wrong elsewhere (helper 39's
    attacks): a trace at a size no fit used, one past the export size, at one, or every dim at once, shows it
    (MovingScale's float moves already at refit's trace one past the export size), and nothing refitted is kept."""
    module = design().eval()
    report = graphfix.export(module, (torch.randn(*example),), tmp_path / "model.onnx", input_names=["x"],
                             output_names=["y"], dynamic_axes=axes)
    assert not report.ok and not report.refitted, report.summary()
    assert any(why in note for note in report.refit_notes for why in ("a size no fit used", "moves as",
                                                                       "all moved", "moves between traces as neither")
               ), report.summary()


class EvenFrames(torch.nn.Module):
    """Pairs of frames (odd T raises), then the first ceil(T / 3) frames: T // 3 and ceil(T / 3) agree at every
    multiple of 6 and at no odd size, so only an even size that is no multiple of 3 tells them apart."""

    def forward(self, x):
        b, t, f = x.shape
        pairs = x.view(b, -1, 2, f).mean(2)
        return torch.cat([x[:, :math.ceil(int(t) / 3)] * 2.0, pairs], dim=1)


def test_a_tie_is_split_at_a_size_of_each_class_the_module_accepts(tmp_path):
    module = EvenFrames().eval()
    path = tmp_path / "model.onnx"
    report = graphfix.export(module, (torch.randn(2, 6, 4),), path, input_names=["x"], output_names=["y"],
                             dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "N"}})
    assert report.ok and any("ceil(T / 3)" in line for line in report.refitted), report.summary()
    assert _independent_ok(path, module, [(b, t, 4) for t in (2, 4, 8, 10, 14, 16) for b in (1, 3)])


class PoolThenPool(torch.nn.Module):
    """A ceil-mode pool by 2, then a floor pool by 3, counted in Python: `ceil(T / 2) // 3`, which is
    `(T + 1) // 6`, neither a floor nor a ceiling of T / 6 (helper 41: `T // 6` fitted every trace before)."""

    def forward(self, x):
        return x[:, :math.ceil(int(x.shape[1]) / 2) // 3] * 2.0


def test_a_floor_after_a_ceiling_is_fitted_as_itself(tmp_path):
    module = PoolThenPool().eval()
    path = tmp_path / "model.onnx"
    report = graphfix.export(module, (torch.randn(2, 8, 4),), path, input_names=["x"], output_names=["y"],
                             dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "N"}})
    assert report.ok and any("(T + 1) // 6" in line for line in report.refitted), report.summary()
    assert _independent_ok(path, module, [(b, t, 4) for t in (5, 11, 17, 23, 6, 13) for b in (1, 3)])


@pytest.mark.parametrize("name", ["traces", "trial", "refit-trial"])
def test_the_scratch_folders_take_no_name_from_the_output(tmp_path, name):
    """helper 44: an output named like a scratch folder of the refit raised FileExistsError out of export."""
    report = graphfix.export(FixedGrid().eval(), (torch.randn(2, 3, 8, 12),), tmp_path / name, input_names=["x"],
                             output_names=["y"], dynamic_axes=IMAGE_AXES)
    assert report.ok and report.refitted, report.summary()


class PadToLength(torch.nn.Module):
    """A pad to a fixed 100 frames computed in Python: exported at 100 it pads by zeros, which a healthy model's
    own padding leaves too (the graph alone cannot report it, README's "What no graph shows")."""

    def forward(self, x):
        return F.pad(x, (0, 0, 0, 100 - int(x.shape[1]))) * 2.0


def test_a_pad_to_a_fixed_length_exported_at_that_length_is_rebuilt(tmp_path):
    module, path = PadToLength().eval(), tmp_path / "model.onnx"
    report = graphfix.export(module, (torch.randn(2, 100, 4),), path, input_names=["x"], output_names=["y"],
                             dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B"}})
    assert report.ok and report.status == "repaired" and report.refitted, report.summary()
    assert _independent_ok(path, module, [(1, 60, 4), (3, 99, 4), (2, 100, 4)])


def test_a_count_that_moves_past_three_times_the_example_is_checked_there(tmp_path):
    """ChunkCount's export, one chunk, matched the module at every size of the proof (to 36 frames) and was
    written ok; the default proof takes 5 and 8 times the example's lengths too, where it fails, and no fit
    (a divisor of 64 fitted it once, wrong from 112 frames) is kept."""
    report = graphfix.export(ChunkCount().eval(), (torch.randn(2, 12, 8),), tmp_path / "model.onnx",
                             input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"},
                                                                                  "y": {0: "B", 1: "T"}})
    assert not report.ok and not report.refitted, report.summary()
    assert any(not c.ok and c.input_shapes["x"][1] == 60 for c in report.checks), report.summary()
