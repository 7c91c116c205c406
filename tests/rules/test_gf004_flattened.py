"""GF004 through a Flatten: `h.flatten(1).view(B, int(T), D)` (helpers 138 and 142) reshapes a [B, 8 T] tensor,
whose second dim the size analysis now carries (`_op_Flatten`: the products of the dims before and from the axis),
so its element count solves T and the baked entry is rebuilt, where the output's length axis is declared dynamic.
Where it is left out of `dynamic_axes`, the exporter declares the output [B, 12, 8], and a model keeping 12 frames
leaves the same graph (helper 143: `h[:, ::int(T) // 12]` is a step of 1 at T = 12, which the trace drops): the
solved T = 12 equals a size the outputs declare, is not taken for the export size, and the repair is refused.
Where the count leaves several entries standing (`view(B, int(T), 2, 4)`: 12 = T, 2 = T // 6 or 4 = T // 3), none
is applied. Where the rebuilt entry needs a step (`view(B, int(T) // 2, 2 * D)`: even lengths only, in PyTorch too),
the probe's odd lengths fail and nothing is written; the message names the step and the `--shape` to give, and
with it the repair is written."""

from __future__ import annotations

import pytest
from conftest import matches_module

torch = pytest.importorskip("torch")
from fixtures.baked_heads import export, repair  # noqa: E402  (imports torch)

pytestmark = pytest.mark.torch


class Flattened(torch.nn.Module):
    """A Linear, flattened to [B, T * 8], then viewed again with `view`'s sizes from `unflatten`."""

    def __init__(self, unflatten, pick=lambda h, length: h):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.unflatten, self.pick = torch.nn.Linear(8, 8), unflatten, pick

    def forward(self, x):
        batch, length, width = x.shape
        return self.unflatten(self.pick(self.lin(x), length).flatten(1), batch, length, width).relu()


VIEWS = {  # the view, and the output's length axis
    "length baked": (lambda h, b, t, d: h.view(b, int(t), d), 1),
    "length and width baked": (lambda h, b, t, d: h.view(b, int(t), int(d)), 1),
    "width first": (lambda h, b, t, d: h.view(b, int(d), int(t)), 2),
    "one less": (lambda h, b, t, d: h[:, d:].view(b, int(t) - 1, d), 1),
}


@pytest.mark.parametrize("view", VIEWS.values(), ids=VIEWS)
def test_a_flattened_length_is_rebuilt(tmp_path, view):
    (unflatten, axis) = view
    module = Flattened(unflatten)
    done, out = repair(export(module, tmp_path / "m.onnx", 12, {0: "B", axis: "T"}))
    assert done.exit_code == 0 and "applied GF004" in done.output, done.output
    matches_module(out, module, [(1, 6, 8), (3, 20, 8), (2, 12, 8), (4, 30, 8)])


KEPT = {  # the module, and whether it follows T
    "length baked": (lambda: Flattened(VIEWS["length baked"][0]), True),
    "every k-th frame, 12 kept": (lambda: Flattened(lambda h, b, t, d: h.view(b, 12, d),
                                                    lambda h, t: h[:, ::int(t) // 12]), False),
}


@pytest.mark.parametrize("kept", KEPT.values(), ids=KEPT)
def test_an_output_the_trace_declares_at_the_length_leaves_the_length_unsolved(tmp_path, kept):
    """Both export to one graph (Flatten, then Reshape [B, 12, 8]) declared [B, 12, 8]: refused, nothing written."""
    build, follows = kept
    module = build()
    path = export(module, tmp_path / "m.onnx", 12, {})
    with torch.no_grad():  # the premise: one follows the length, the other keeps 12 frames
        assert module(torch.randn(1, 24, 8)).shape[1] == (24 if follows else 12)
    refused, out = repair(path)
    assert refused.exit_code == 1 and "declares 12" in refused.output and not out.exists(), refused.output


def test_entries_the_count_leaves_alike_are_none_applied(tmp_path):
    """`view(B, int(T), 2, 4)` of [B, 8 T] at T = 12: [B, T, 2, 4], [B, 12, T // 6, 4] and [B, 12, 2, T // 3] all
    keep the count, and nothing after the Reshape holds an axis: none applied, nothing written."""
    module = Flattened(lambda h, b, t, d: h.view(b, int(t), 2, 4))
    refused, out = repair(export(module, tmp_path / "m.onnx", 12, {}))
    assert refused.exit_code == 1 and "candidate" in refused.output and not out.exists(), refused.output


def test_a_flattened_traced_length_is_healthy(tmp_path):
    """The same view with the traced sizes: nothing to find, repair exits 0 and the model is as PyTorch's."""
    module = Flattened(lambda h, b, t, d: h.view(b, t, d))
    done, out = repair(export(module, tmp_path / "m.onnx", 12, {}))
    assert done.exit_code == 0 and "GF004" not in done.output, done.output
    matches_module(out, module, [(1, 6, 8), (3, 20, 8)])


def test_a_rebuilt_entry_that_needs_a_step_says_which_sizes_to_give(tmp_path):
    module = Flattened(lambda h, b, t, d: h.view(b, int(t) // 2, 2 * d))
    path = export(module, tmp_path / "m.onnx", 12, {0: "B", 1: "half"})
    refused, out = repair(path)
    assert refused.exit_code == 1 and not out.exists(), refused.output
    assert "repaired graph's shapes agree only at multiples of 2 of T" in refused.output, refused.output
    given = refused.output.split("give them with --shape: ")[1].split(".")[0].split()
    assert given[0] == "--shape" and given[1].startswith("x=")
    done, out = repair(path, *given)
    assert done.exit_code == 0 and "applied GF004" in done.output, done.output
    matches_module(out, module, [(1, 6, 8), (3, 20, 8), (2, 12, 8), (4, 30, 8)])
