"""GF004: an entry of 1 can be a baked size too. `h.reshape(B, 11, int(T - 1) // 11, D).mean(2)`, eleven segments
pooled, traced at T = 12 bakes `[B, 11, 1, D]`: the 11 may be T - 1 (with the 1 kept) or the 1 may be
(T - 1) // 11 (with the 11 kept), and both keep the element count. Only the 11 was a candidate (an entry of 1 was
never taken for a size), the rebuild as T - 1 was SAFE, the output's declared 11 was followed as T - 1, and the
model was written with exit 0, [B, T - 1, D] where PyTorch gives [B, 11, D] (helper 143's segments, moved off the
export size by one). Now both are candidates, the proof cannot tell them apart, and nothing is written."""

from __future__ import annotations

import pytest
from conftest import matches_module

torch = pytest.importorskip("torch")
from fixtures.baked_heads import export, repair  # noqa: E402  (imports torch)

pytestmark = pytest.mark.torch


class Segments(torch.nn.Module):
    """A Linear, its first frame dropped, then `split` of the rest (B, T - 1, 8) with the traced length."""

    def __init__(self, split):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.split = torch.nn.Linear(8, 8), split

    def forward(self, x):
        batch, length, width = x.shape
        return self.split(self.lin(x)[:, 1:], batch, int(length) - 1, width).relu()


def test_eleven_segments_traced_one_frame_each_are_not_rebuilt_as_the_length(tmp_path):
    module = Segments(lambda h, b, n, d: h.reshape(b, 11, n // 11, d).mean(2))
    with torch.no_grad():  # the premise: eleven segments whatever the length
        assert module(torch.randn(1, 34, 8)).shape == (1, 11, 8)
    refused, out = repair(export(module, tmp_path / "m.onnx", 12, {}))
    assert refused.exit_code == 1 and not out.exists(), refused.output
    assert "1 = T // 11" in refused.output and "11 = T - 1" in refused.output, refused.output


class Chunks(torch.nn.Module):
    """A Linear, then one mean per 12 frames with the traced length."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.lin(x).reshape(x.shape[0], int(x.shape[1]) // 12, 12, 8).mean(2)


CHUNKS = {  # the module, and a length of three chunks
    "after a dropped frame": (lambda: Segments(lambda h, b, n, d: h.reshape(b, n // 11, 11, d).mean(2)), 34),
    "of the whole length": (Chunks, 36),
}


@pytest.mark.parametrize("chunks", CHUNKS.values(), ids=CHUNKS)
def test_chunks_traced_as_one_are_not_rebuilt_as_the_length(tmp_path, chunks):
    """Helper 144: chunks pooled, `reshape(B, int(T) // 12, 12, D).mean(2)` traced at T = 12, bake [B, 1, 12, D]:
    the 12 may be T or the 1 (beside the pooled axis) T // 12. The second was refuted by the output's traced 1 at
    T = 1 (a declared 1 was held as a promise where a larger traced int is followed), or, where it fits as T // 11
    as well, was unsafe to build and dropped, so the proof took the first as the only candidate left: wrong. A
    candidate the graph leaves stands. Refused, nothing written."""
    build, length = chunks
    module = build()
    with torch.no_grad():  # the premise: one mean per chunk
        assert module(torch.randn(1, length, 8)).shape == (1, 3, 8)
    refused, out = repair(export(module, tmp_path / "m.onnx", 12, {}))
    assert refused.exit_code == 1 and "ambiguous" in refused.output and not out.exists(), refused.output


@pytest.mark.parametrize("declared", [True, False], ids=["length axis declared", "output as traced"])
def test_a_kept_axis_of_one_is_no_size(tmp_path, declared):
    """`h.reshape(B, int(T) - 1, 1, D)` bakes the same [B, 11, 1, D], but nothing pools the axis of 1: a kept axis
    (a mask's `m.view(B, int(T), 1)` broadcast against features) is no size. Read as one, it made such repairs
    ambiguous at the export lengths where one form of the size alone fits it (helper 144: `T // 15` at 16 frames,
    which fails only where the original fails too). Rebuilt as T - 1, matching PyTorch."""
    module = Segments(lambda h, b, n, d: h.reshape(b, n, 1, d))
    done, out = repair(export(module, tmp_path / "m.onnx", 16, {0: "B", 1: "N"} if declared else {}))
    assert done.exit_code == 0 and "applied GF004" in done.output, done.output
    matches_module(out, module, [(1, 34, 8), (3, 7, 8), (2, 16, 8)])


@pytest.mark.parametrize("length", [4, 16])
def test_a_masked_mean_over_a_kept_axis_of_one_is_rebuilt(tmp_path, length):
    """Helper 144: `m = mask.view(B, int(T), 1)`, then `(h * m).sum(1) / m.sum(1)`: a Reduce pools the length, the
    axis before the 1, not the 1 or the axis after it (a chunk's), so the 1 is no candidate. Rebuilt as T."""
    class MaskedMean(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x):
            m = (x[..., 0] > -1).float().view(x.shape[0], int(x.shape[1]), 1)
            return (self.lin(x) * m).sum(1) / m.sum(1)

    module = MaskedMean()
    done, out = repair(export(module, tmp_path / "m.onnx", length, {0: "B"}))
    assert done.exit_code == 0 and "applied GF004" in done.output, done.output
    matches_module(out, module, [(1, 5, 8), (3, length + 13, 8)])


def test_a_mask_viewed_with_the_length_is_rebuilt_at_a_power_of_two(tmp_path):
    """Helper 144's `h * m.view(B, int(T), 1)` at 16 frames, the output's length declared: repaired (the 1 was
    read as `T // 15`, and the repair refused as ambiguous)."""
    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.lin(x) * x[..., 0].sigmoid().view(x.shape[0], int(x.shape[1]), 1)

    module = Masked()
    done, out = repair(export(module, tmp_path / "m.onnx", 16, {0: "B", 1: "T"}))
    assert done.exit_code == 0 and "applied GF004" in done.output, done.output
    matches_module(out, module, [(1, 5, 8), (3, 40, 8), (2, 16, 8)])


def test_attention_traced_at_one_token_is_rebuilt(tmp_path):
    """Helper 146: nn.MultiheadAttention exported at T = 1 (a decoder's first step) bakes `Concat([1], B * 2, [8])`;
    the 1 is the size itself, a candidate wherever the size solved is 1 (read only where pooled, it was no
    candidate and the repair was refused)."""
    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.att = torch.nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.att(x, x, x, need_weights=False)[0]

    module = Attention()
    done, out = repair(export(module, tmp_path / "m.onnx", 1, {0: "B", 1: "T"}))
    assert done.exit_code == 0 and "applied GF004" in done.output, done.output
    matches_module(out, module, [(1, 5, 8), (3, 14, 8)])
