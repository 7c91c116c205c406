"""graphfix.exporting.probes: the far sizes the default proof takes, past the probes and within what a proof can
run (FAR_POSITIONS positions in the dims grown), and the caps they show.

Each export case is checked by the proof's own failure at the size named: the file matched the module at every
other size and was written ok before these far sizes.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import graphfix  # noqa: E402
from graphfix.exporting.probes import FAR_POSITIONS, far_probes, few_positions  # noqa: E402

pytestmark = [pytest.mark.torch]


def _shapes(sets: list[tuple]) -> list[list[tuple]]:
    return [[tuple(t.shape) for t in s[:-1]] for s in sets]


def test_the_default_proof_takes_the_far_sizes_of_few_positions_only():
    """Helper 161: a healthy attention exported at 2000 frames was refused, onnxruntime's scores at 16000 frames
    (8 GB) out of memory. The default proof takes a far size only where its grown dims span at most FAR_POSITIONS
    positions; longer ones still settle an unsafe guess, as before."""
    grows = {0: {1}}
    short = far_probes(((torch.randn(2, 12, 8),), {}), grows)
    long = far_probes(((torch.randn(1, 2000, 32),), {}), grows)
    assert len(few_positions(short, grows, (torch.randn(2, 12, 8),))) == len(short) == 3
    assert long and few_positions(long, grows, (torch.randn(1, 2000, 32),)) == []
    assert all(s[0].shape[1] > FAR_POSITIONS for s in long)


def test_where_five_times_spans_too_many_positions_each_dim_grows_as_far_as_they_allow():
    """Helper 162: one factor for every input let an image (16 x 16: 4 times) hold a text beside it to 4 times its
    length; `N`, an NCHW batch's name, counted as a position and left no room; a cube's factor, 3.9999999999999996
    in floats, gave 15 where 16 fills 4096."""
    image, text = torch.randn(2, 3, 16, 16), torch.randn(2, 50, 8)
    grows, names = {0: {2, 3}, 1: {1}}, {(0, 2): "H", (0, 3): "W", (1, 1): "L"}
    assert [(2, 3, 64, 64), (2, 400, 8)] in _kept((image, text), grows, names)
    grows, names = {0: {0, 2, 3}}, {(0, 0): "N", (0, 2): "H", (0, 3): "W"}
    assert [(2, 3, 64, 64)] in _kept((image,), grows, names)
    assert [(2, 2, 16, 16, 16)] in _kept((torch.randn(2, 2, 4, 4, 4),), {0: {2, 3, 4}})
    shared = far_probes(((torch.randn(2, 16, 16), torch.randn(2, 16)), {}), {0: {1, 2}, 1: {1}},
                        {(0, 1): "T", (0, 2): "S", (1, 1): "T"})
    assert all(s[0].shape[1] == s[1].shape[1] for s in shared)  # one name, one size


def test_an_axis_0_named_like_a_length_counts_as_a_position_where_a_far_size_grows_it():
    """Helper 163: a text encoder's batch named `N` (16 x 128) was left out of the positions, and 8 times both
    (128 x 1024 tokens) entered the default proof: 25 s and 3.5 GB where it took 3 s. Only the fill, which leaves
    `N` at 16, is taken."""
    assert _kept((torch.randn(16, 128, 8),), {0: {0, 1}}, {(0, 0): "N", (0, 1): "L"}) == [[(16, 1024, 8)]]


def _kept(args: tuple, grows: dict, names: dict | None = None) -> list[list[tuple]]:
    return _shapes(few_positions(far_probes((args, {}), grows, names), grows, args))


class CappedTokens(torch.nn.Module):
    """Helper 160's cap: an 8 x 8 patch grid's tokens, at most 40. Exported at 16 x 16 (4 tokens), no trace and no
    probe to 48 x 48 (36 tokens) reaches the cap; 5 times (80 x 80) spans too many positions for the proof."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 4, 8, stride=8)

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        tokens = min(math.ceil(h / 8) * math.ceil(w / 8), 40)
        return self.proj(F.pad(x, (0, (-w) % 8, 0, (-h) % 8))).flatten(2)[:, :, :tokens]


@pytest.mark.parametrize("batch", ["B", "N"])
def test_a_cap_past_the_probes_is_checked_as_far_as_the_positions_allow(tmp_path, batch):
    """The fit `ceil(H / 8) * ceil(W / 8)` held at every trace and probe and was written ok, wrong from 56 x 56.
    Where 5 times the example spans more than FAR_POSITIONS, the proof takes the size that fills them (64 x 64),
    the batch left alone where it is named like a length (helper 162)."""
    report = graphfix.export(CappedTokens().eval(), (torch.randn(2, 3, 16, 16),), tmp_path / "model.onnx",
                             input_names=["x"], output_names=["y"],
                             dynamic_axes={"x": {0: batch, 2: "H", 3: "W"}, "y": {0: batch, 2: "T"}})
    assert not report.ok, report.summary()
    assert any(not c.ok and c.input_shapes["x"][2:] == [64, 64] for c in report.checks), report.summary()


class TextBesideImage(torch.nn.Module):
    """Helper 162: a text's positions cut at 300 (`min(L, 300)`) beside an image's patches."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 8, stride=8)
        self.pos = torch.nn.Parameter(torch.randn(1, 512, 8))

    def forward(self, image, text):
        n = min(text.shape[1], 300)
        return torch.cat([self.conv(image).flatten(2).transpose(1, 2), text[:, :n] + self.pos[:, :n]], 1)


def test_a_cap_on_one_input_is_checked_past_it_beside_an_input_of_many_positions(tmp_path):
    """Written ok on 13be0f4, wrong from 301 tokens: the image held the text to 200."""
    report = graphfix.export(TextBesideImage().eval(), (torch.randn(2, 3, 16, 16), torch.randn(2, 50, 8)),
                             tmp_path / "model.onnx", input_names=["image", "text"], output_names=["y"],
                             dynamic_axes={"image": {0: "B", 2: "H", 3: "W"}, "text": {0: "B", 1: "L"},
                                           "y": {0: "B", 1: "N"}})
    assert not report.ok, report.summary()
    assert any(not c.ok and c.input_shapes["text"][1] == 400 for c in report.checks), report.summary()
