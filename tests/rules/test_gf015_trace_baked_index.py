"""GF015 trace-baked-index: with `--trace-shape`, an integer that cuts, rolls or counts along an axis of a given
size in one of that size's forms is a warning (helper 133: `h[:, int(T) // 2:]`, `torch.roll(h, int(T) // 2,
1)`, `h.topk(int(T) // 2, 1)` and an `F.interpolate(size=(int(H), int(W)))` had no finding and went out with exit
0, wrong at every other size), nor `arange(T) / int(T)` positions. Without the export sizes given, and for
numbers that are no form of them, nothing. A warning: `repair` writes the model as it came, the warning shown;
`check --fail-on warning` fails."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

HEADS = {
    "half-cut": (lambda h, n: h[:, n // 2:].mean(1), True),
    "roll": (lambda h, n: torch.roll(h, n // 2, 1), True),
    "topk": (lambda h, n: h.topk(n // 2, 1).values, True),
    "own-window": (lambda h, n: h[:, 1:].mean(1), False),  # magnitude 2 or less: never read
    "traced-cut": (lambda h, n: h[:, h.shape[1] // 2:].mean(1), False),  # the start follows the length
    # float scales of positions along the axis (helper 133's `arange(T) / int(T)`); of a sum, GF012's
    "positions": (lambda h, n: h + (torch.arange(h.shape[1]) / n)[None, :, None], True),
    "linspace": (lambda h, n: h * (torch.arange(h.shape[1]) / (n - 1))[None, :, None], True),
    "traced-positions": (lambda h, n: h + (torch.arange(h.shape[1]) / h.shape[1])[None, :, None], False),
    "own-scale": (lambda h, n: h.sum(1) / 7.0, False),  # no form of 13
    "own-13-on-features": (lambda h, n: h.sum(-1) / 13.0, False),  # the size's number, on the static features
}


class Head(torch.nn.Module):
    def __init__(self, head):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.head = torch.nn.Linear(8, 8), head

    def forward(self, x):
        return self.head(self.lin(x), int(x.shape[1]))


def _export(tmp_path, module):
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, 13, 8),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"}})
    return path


@pytest.mark.parametrize(("head", "baked"), HEADS.values(), ids=HEADS)
def test_a_form_of_a_given_size_along_its_axis_is_a_warning(tmp_path, head, baked):
    module = Head(head)
    path = _export(tmp_path, module)
    x = torch.randn(3, 20, 8)  # the warning's claim, checked: the export differs from PyTorch at another length
    with torch.no_grad():
        expected = module(x).numpy()
    got = run(str(path), {"x": x.numpy()})[0]
    assert (got.shape != expected.shape or not np.allclose(got, expected, atol=1e-5)) == baked
    given = CliRunner().invoke(cli, ["diagnose", str(path), "--trace-shape", "x=2x13x8"])
    assert ("warning GF015" in given.output) == baked, given.output
    assert "GF015" not in CliRunner().invoke(cli, ["diagnose", str(path)]).output
    if baked:
        gate = CliRunner().invoke(cli, ["check", str(path), "--trace-shape", "x=2x13x8", "--fail-on", "warning"])
        assert gate.exit_code == 1, gate.output


class Upsampled(torch.nn.Module):
    """A segmentation head's logits resized back to the image with Python ints (SegFormer's users)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 4, stride=4)

    def forward(self, x):
        size = (int(x.shape[2]), int(x.shape[3]))
        return torch.nn.functional.interpolate(self.conv(x), size=size, mode="bilinear", align_corners=False)


def test_a_resize_to_the_given_image_size_is_a_warning(tmp_path):
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Upsampled().eval(), (torch.randn(2, 3, 64, 96),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 2: "H", 3: "W"}})
    given = CliRunner().invoke(cli, ["diagnose", str(path), "--trace-shape", "x=2x3x64x96"])
    assert "warning GF015" in given.output and "its output size" in given.output, given.output


class RotateHalf(torch.nn.Module):
    """A rotary half-split of 16 features (a static axis), exported at 16 tokens: no cut of a length (helper 137:
    a dynamo-exported Llama at T = head_dim had 4 warnings a layer)."""

    def forward(self, x):
        return torch.cat([-x[..., 8:], x[..., :8]], -1) * x


class TopThree(torch.nn.Module):
    def forward(self, x):
        return x.topk(3, dim=1).values


@pytest.mark.parametrize(("module", "opset"), [(RotateHalf(), 17), (TopThree(), 9)],
                         ids=["rotate-half", "topk-opset-9"])
def test_static_features_and_old_topk_are_no_echo(tmp_path, module, opset):
    """The second crashed the rule (a TopK whose count is an attribute before opset 10, helper 137)."""
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, 16, 16),), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"}})
    found = CliRunner().invoke(cli, ["diagnose", str(path), "--trace-shape", "x=2x16x16"])
    assert found.exit_code == 0 and "GF015" not in found.output, found.output
