"""graphfix.export and graphfix.verify take what torch.onnx.export takes: lists of tensors (a detection model's
images), keyword arguments, and a dict ending the args tuple."""

from __future__ import annotations

import warnings

import pytest

import graphfix

torch = pytest.importorskip("torch")


class Pair(torch.nn.Module):
    def forward(self, images, scale):
        return (images[0] + images[1]) * scale


class Unscaled(torch.nn.Module):
    def forward(self, images, scale):
        return images[0] + images[1]


def test_a_list_of_tensors_and_keyword_arguments_are_exported_and_verified(tmp_path):
    a, b, scale = torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 8)
    dynamic = {name: {0: "B"} for name in ("a", "b", "scale")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = graphfix.export(Pair(), ([a, b],), tmp_path / "pair.onnx", kwargs={"scale": scale},
                                 input_names=["a", "b", "scale"], dynamic_axes=dynamic)
    assert report.ok, report.summary()
    assert [c.input_shapes["a"] for c in report.checks] == [[3, 8], [6, 8], [9, 8]]  # resized by the graph's dims
    check = graphfix.verify(tmp_path / "pair.onnx", Pair(), ([a, b], {"scale": scale}),
                            probe_args=[([torch.randn(5, 8), torch.randn(5, 8)], {"scale": torch.randn(5, 8)})])
    assert check.ok and [c.input_shapes["scale"] for c in check.checks] == [[3, 8], [5, 8]]
    unscaled = graphfix.verify(tmp_path / "pair.onnx", Unscaled(), ([a, b], {"scale": scale}))
    assert not unscaled.ok  # a module that ignores the keyword argument is told apart


class Ignoring(torch.nn.Module):
    """Its second argument unused: the TorchScript exporter drops it from the graph's inputs. The reshape bakes the
    traced length (`int()`), which the repair must rebuild from the right input."""

    def forward(self, x, unused, mask):
        return (x * mask.unsqueeze(-1)).reshape(x.shape[0], int(x.shape[1]) * 2, 4)


def test_an_argument_the_exporter_drops_leaves_the_others_in_their_places(tmp_path):
    """helper 106: graphfix.export fed and resized the call's tensors by position, so with an unused argument
    dropped every tensor after it went to the input before it: each check failed ('Invalid rank for input')."""
    x, unused, mask = torch.randn(2, 5, 8), torch.randn(3), torch.ones(2, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = graphfix.export(Ignoring(), (x, unused, mask), tmp_path / "m.onnx",
                                 input_names=["x", "unused", "mask"],
                                 dynamic_axes={"x": {0: "B", 1: "T"}, "mask": {0: "B", 1: "T"}})
    assert report.ok, report.summary()
    shapes = [c.input_shapes for c in report.checks]
    assert all(set(s) == {"x", "mask"} and s["x"][:2] == s["mask"] for s in shapes), shapes
    assert len({tuple(s["x"]) for s in shapes}) >= 3 and any(s["x"][1] != 5 for s in shapes), shapes
    assert report.repairs or report.refitted, report.summary()  # the baked length was rebuilt
