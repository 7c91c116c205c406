"""Traps from red team 116: fixes other than GF004's rebuild, written with exit 0 and wrong at other sizes.

- Overlap-add's counts built with a Python int, `1 + (arange(T) >= 20)`, traced at 12 frames: the divisor is all
  ones there, and GF006 shrank it to one element as a safe fix (a divisor was exempt from the doubt of an edge past
  the export size). Frames from 20 on were divided by 1 where PyTorch divides by 2.
- A GRU started from `zeros(1, int(B), H)` (GF006 shrinks it: the batch follows) beside a statistic over the
  batch built with the same int: `o - o.sum(0) / float(B)` at B = 2, VICReg's `z.T @ z / (N - 1)` at N = 3. The
  constants are 2.0 and 0.5, every model's own numbers, so no echo is read; but the original mixes its samples
  along the batch at the export size, which the proof now says: with no reference at other batch sizes the
  repair is not written (the batch's independence was only "not shown" before, and `runs` was enough).
- fairseq HuBERT's `h[padding_mask] = 0` (GF003 aligns the mask, safe) beside a length baked elsewhere: a mean
  `h.sum(1) / float(T)`, a cut `h[:, :int(T) // 2]`, speechbrain's StatisticsPooling with relative lengths
  (`int(round(lengths[i] * T))`). The original fails at every size (the mask is misaligned), so nothing solved its
  export length and the echo check was not run for GF003's fix: repaired with exit 0, wrong at every other length.
  The check now reads, for it, the size most likely baked and any scale of a sum over a length the graph leaves
  symbolic; the fix is unsafe there, and a mask alone is still repaired (the suite's guard compares it). Helper
  117 added positions scaled by the length (`arange(T) / float(T)`) and a mean taken past three Linears (`mlp(
  h.sum(1)) / float(T)`), read as a length's forms are past a map; an integrator's `cumsum(h, 1) * 0.0125` is
  the model's own (a cumulative sum is no positions' Range).
"""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
from fixtures.baked_heads import repair  # noqa: E402  (imports torch)

pytestmark = pytest.mark.torch
AXES = {0: "batch", 1: "T"}


class OverlapCounts(torch.nn.Module):
    """Frames from 20 on are covered by two windows (overlap-add), so they are divided by 2."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        counts = 1.0 + (torch.arange(int(x.shape[1])) >= 20).float()[:, None]
        return self.lin(x) / counts


class StateFromTheBatch(torch.nn.Module):
    """A GRU from a zero state of the traced batch, `zeros(1, int(B), 8)` (GF006 shrinks it: the batch follows)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gru = torch.nn.GRU(4, 8, batch_first=True)

    def run(self, x):
        batch = int(x.shape[0])
        return (*self.gru(x, torch.zeros(1, batch, 8)), batch)


class StateThenBatchMean(StateFromTheBatch):
    """Each sample less the batch's mean, `/ float(B)`."""

    def forward(self, x):
        o, _, batch = self.run(x)
        return o - o.sum(0) / float(batch)


class StateThenCovariance(StateFromTheBatch):
    """VICReg's covariance of the final states over the batch, `z.T @ z / (N - 1)`."""

    def forward(self, x):
        _, h, batch = self.run(x)
        z = h[0] - h[0].mean(0)
        return z.T @ z / (batch - 1)


def _export(module, path, example, output_axes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(*example),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": AXES, "y": output_axes})
    return path


def test_a_divisor_of_ones_cut_at_the_export_length_may_be_counts_past_it(tmp_path):
    done, out = repair(_export(OverlapCounts(), tmp_path / "m.onnx", (1, 12, 4), AXES))
    assert done.exit_code == 1 and not out.exists(), done.output
    assert "GF006" in done.output and "edge lies past the export size" in done.output, done.output


@pytest.mark.parametrize(("module", "example", "output_axes"), [
    (StateThenBatchMean, (2, 12, 4), AXES),
    (StateThenCovariance, (3, 12, 4), {}),
], ids=["mean-over-the-batch", "covariance-over-the-batch"])
def test_a_statistic_over_the_batch_beside_a_batch_fix_is_not_written_unproved(tmp_path, module, example,
                                                                                output_axes):
    done, out = repair(_export(module(), tmp_path / "m.onnx", example, output_axes))
    assert done.exit_code == 1 and not out.exists(), done.output
    assert "mixes the samples along 'batch'" in done.output, done.output


class Masked(torch.nn.Module):
    """`h[padding_mask] = 0`, exported without the mask's trailing axis (GF003), then `after(h)`."""

    def __init__(self, after=lambda self, h, lengths: h):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.after = torch.nn.Linear(4, 20), after
        self.mlp = torch.nn.Sequential(*(layer for _ in range(3) for layer in (torch.nn.Linear(20, 20),
                                                                               torch.nn.ReLU())))

    def forward(self, x, padding_mask, lengths):
        h = self.lin(x)
        h[padding_mask] = 0
        return self.after(self, h, lengths)


def _statistics_pooling(self, h, lengths):
    from fixtures.library_models import import_torchaudio

    pytest.importorskip("speechbrain")
    import_torchaudio()
    from speechbrain.nnet.pooling import StatisticsPooling

    return StatisticsPooling()(h, lengths)


AFTER_THE_MASK = {
    "mean-by-the-length": (lambda self, h, lengths: h.sum(1) / float(h.shape[1]), {0: "batch"}),
    "first-half": (lambda self, h, lengths: h[:, : int(h.shape[1]) // 2], {0: "batch", 1: "half"}),
    "speechbrain-statistics-pooling": (_statistics_pooling, {0: "batch"}),
    "positions-over-the-length": (lambda self, h, lengths: h + (torch.arange(h.shape[1], dtype=torch.float32)
                                                                / float(h.shape[1]))[None, :, None], AXES),
    "mean-past-three-linears": (lambda self, h, lengths: self.mlp(h.sum(1)) / float(h.shape[1]), {0: "batch"}),
}


def _export_masked(module, path, output_axes):
    inputs = (torch.randn(1, 12, 4), torch.zeros(1, 12, dtype=torch.bool), torch.ones(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), inputs, str(path), dynamo=False, opset_version=17,
                          input_names=["x", "padding_mask", "lengths"], output_names=["y"],
                          dynamic_axes={"x": AXES, "padding_mask": AXES, "lengths": {0: "batch"}, "y": output_axes})
    return path


@pytest.mark.parametrize("name", AFTER_THE_MASK)
def test_a_length_baked_beside_a_misaligned_mask_makes_its_fix_unsafe(tmp_path, name):
    after, output_axes = AFTER_THE_MASK[name]
    done, out = repair(_export_masked(Masked(after), tmp_path / "m.onnx", output_axes))
    assert done.exit_code == 1 and not out.exists(), done.output
    assert "GF003's fix" in done.output and "unsafe because" in done.output, done.output


@pytest.mark.parametrize(("after", "output_axes"), [
    (lambda self, h, lengths: h, AXES),
    (lambda self, h, lengths: h.sum(1) * 0.37, {0: "batch"}),  # a learnt gain (helper 117): no whole length's form
    (lambda self, h, lengths: h.sum(1) / lengths[:, None].clamp(min=1) * 0.7071, {0: "batch"}),
    (lambda self, h, lengths: torch.cumsum(h, 1) * 0.0125, AXES),  # an integrator's time step (helper 117)
], ids=["alone", "summed-by-a-gain", "masked-mean-scaled", "integrated"])
def test_a_misaligned_mask_with_the_models_own_numbers_is_still_repaired(tmp_path, after, output_axes):
    done, out = repair(_export_masked(Masked(after), tmp_path / "m.onnx", output_axes))
    assert done.exit_code == 0 and out.exists() and "applied GF003" in done.output, done.output
