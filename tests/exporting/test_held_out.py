"""graphfix.exporting.held_out: the traces that check refit's fits at sizes no fit used, two dims moved at once
where the module takes it, each alone where it does not, and far from the export size in every class of sizes."""

from __future__ import annotations

import math

import onnx
import pytest

torch = pytest.importorskip("torch")

from test_refit import IMAGE_AXES, PatchCount, _independent_ok, _traced  # noqa: E402

from graphfix.exporting.refit import refit  # noqa: E402
from graphfix.exporting.verify import named_dims  # noqa: E402

pytestmark = [pytest.mark.torch]


def test_far_held_out_sizes_fall_in_every_class_modulo_a_stride_or_a_patch():
    """The held-out sizes spread up to REACH times the export size are a step apart that shares no factor with
    2, 3, 5 or 7: a module that takes only multiples of 8 (MobileViT's patches) is checked far from its export
    size too, not only at sizes where it traces another graph."""
    from graphfix.exporting.held_out import PERIOD, held_out_sizes
    from graphfix.exporting.refit import _Traces

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["B", "T"])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["B", "T"])
    model = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                                          [x], [y]))
    base = {"B": 2, "T": 32}
    traces = _Traces(lambda sizes: None, model, base, ())
    far = [s["T"] for s in held_out_sizes(traces, base, {"T"}, set()) if s["B"] == 2 and s["T"] > 32 + PERIOD]
    for modulus in (8, 3, 5, 7):
        assert {t % modulus for t in far} == set(range(modulus)), (modulus, far)


class CornerStep(torch.nn.Module):
    """Half the rows and columns, a row more where the height grew past 12 and the width shrank below 8 (exported
    at 8 x 12): `ceil(H / 2)` wherever one side stays at its export size (refit's traces of each dim alone) and at
    every dim moved at once the same way (one past, half again, ...)."""

    def forward(self, x):
        h, w = x.shape[2:]
        rows = math.ceil(h / 2) + (1 if int(h) > 12 and int(w) < 8 else 0)
        return x[:, :, :rows, :math.ceil(w / 2)] * 2.0


class AreaCap(torch.nn.Module):
    """PatchCount up to four times the export's area (a table of positions that long): each side alone grows to
    4x, both together to 2x only."""

    def forward(self, x):
        if int(x.shape[2]) * int(x.shape[3]) > 4 * 8 * 12:
            raise ValueError("more patches than the position table holds")
        return PatchCount()(x)


def test_the_fits_of_two_sides_are_checked_with_both_moved(tmp_path):
    """The held-out traces move an image's height and width together (half the traces), one side's smaller sizes
    with the other's larger: CornerStep's fit `ceil(H / 2)` holds in every trace of one side alone and fails
    there, so it is not kept (it was); no trace grows the input past what one side's farthest does (REACH times
    the export's area)."""
    from graphfix.exporting.fit import REACH

    exported, trace, asked = _traced(CornerStep().eval(), torch.randn(2, 3, 8, 12), IMAGE_AXES, tmp_path)
    result = refit(exported, named_dims(exported, [(2, 3, 8, 12)]), trace)
    assert result.model is None and any("a size no fit used" in note for note in result.notes), result.notes
    assert all(s["H"] * s["W"] <= REACH * 8 * 12 for s in asked), max(asked, key=lambda s: s["H"] * s["W"])


def test_sides_that_cannot_grow_together_are_checked_one_at_a_time(tmp_path):
    """AreaCap raises where both sides grew much: the traces that moved both say nothing there, so each side is
    traced alone at those sizes, and after two such failures alone from then on; the fits are checked and right."""
    module = AreaCap().eval()
    exported, trace, asked = _traced(module, torch.randn(2, 3, 8, 12), IMAGE_AXES, tmp_path)
    result = refit(exported, named_dims(exported, [(2, 3, 8, 12)]), trace)
    assert result.model is not None, result.notes
    both = [s for s in asked if s["H"] != 8 and s["W"] != 12 and s["B"] == 2]
    assert both and sum(s["H"] * s["W"] > 4 * 8 * 12 for s in both) <= 2, both  # no third failure of both
    onnx.save(result.model, str(tmp_path / "refit.onnx"))
    assert _independent_ok(tmp_path / "refit.onnx", module, ((1, 3, 16, 12), (3, 3, 12, 18), (2, 3, 10, 14)))
