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
