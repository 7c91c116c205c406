"""GF011 on adaptive pools that torch.export wrote as fixed pools along a dynamic axis (helper 77). torch.nn's
`AdaptiveAvgPool1d(8)` after a Conv1d, exported with dynamo at 40 frames, is an AveragePool of kernel 5 whose
output has `T // 5` positions; `AdaptiveMaxPool2d((4, 4))` at 32 by 40 a MaxPool of kernel (8, 10). Both ran at
every size, `diagnose` found nothing and `repair` wrote them unchanged with exit 0, "passed", though they differ
from PyTorch at every other size (the tests show it with onnxruntime). Now an error with no fix: `repair` refuses
and writes nothing. Controls: an adaptive pool to 1 (torch.export writes a mean, right at every size) and one
along a static axis.

Helper 83: an output size that does not divide the export size is laid out by torch.export as gathers over bins
(torchvision's AlexNet at 96 by 128 or 191 by 193, `AdaptiveAvgPool1d(7)` at 40 frames): the graph returns the
output size at every size but pools the wrong positions there, or gathers out of range; it ran, and `repair` wrote
it with exit 0. Controls: the same pool along a static axis, a kept `None` axis, a length cropped to 16 first. Left
alone: a 2-d pool exported where its input had the output size writes the graph of a kept `None` axis."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import run

import graphfix

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch]
nn = torch.nn


def findings(path):
    return [f for f in graphfix.diagnose(str(path), static=True) if f.rule == "GF011"]


def export(module, example, path, dims):
    """As users call the dynamo exporter: `dynamic_axes` naming the dims that vary."""
    torch.onnx.export(module.eval(), (example,), str(path), dynamo=True, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": dims})
    return path


def pooled_1d(size):
    return nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.AdaptiveAvgPool1d(size))


def pooled_max_2d(size):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveMaxPool2d(size))


def _timm_pool(kind: str) -> nn.Module:
    from fixtures.library_models import import_timm

    pool = import_timm().layers.SelectAdaptivePool2d(output_size=2, pool_type=kind, flatten=True)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), pool)


class Called(nn.Module):
    """The functional call, as timm's SelectAdaptivePool2d('avgmax') makes it: no pooling module in the path."""

    def __init__(self, size=8):
        super().__init__()
        self.conv, self.size = nn.Conv1d(4, 4, 3, padding=1), size

    def forward(self, x):
        return nn.functional.adaptive_avg_pool1d(self.conv(x), self.size)


def _summarized(h, size, pool):
    """A function of the model's own, as libraries write them: the stack trace keeps only forward's line."""
    return pool(h, size)


class InAFunction(nn.Module):
    """The pool called in a function of the model's (helper 147: found by nothing, written with exit 0)."""

    def __init__(self, pool=nn.functional.adaptive_max_pool1d, size=4, conv=nn.Conv1d):
        super().__init__()
        self.conv, self.pool, self.size = conv(4, 4, 3, padding=1), pool, size

    def forward(self, x):
        return _summarized(self.conv(x), self.size, self.pool)


class Subclassed(nn.AdaptiveAvgPool1d):
    """A subclass: the module path names it, not torch.nn's class."""


class Cropped(nn.Module):
    """Padded and cropped to 16 before the pool: its input is 16 long at every size (helper 81)."""

    def __init__(self, size=4):
        super().__init__()
        self.conv, self.pool = nn.Conv1d(4, 4, 3, padding=1), nn.AdaptiveAvgPool1d(size)

    def forward(self, x):
        return self.pool(nn.functional.pad(self.conv(x), (0, 16))[..., :16])


def alexnet():
    """torchvision's AlexNet: `AdaptiveAvgPool2d((6, 6))` after its features (its classifier one Linear, to keep the
    file small)."""
    from fixtures.torchvision_models import register_ops

    register_ops()  # torchvision's compiled ops do not load with the CPU torch
    import torchvision

    model = torchvision.models.alexnet(weights=None)
    model.classifier = nn.Linear(256 * 6 * 6, 10)
    return model


def refused(path, tmp_path):
    """`repair` refuses the model (GF011, exit 1) and writes nothing."""
    out = tmp_path / "fixed.onnx"
    done = subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    return done.returncode == 1 and "GF011" in done.stdout and not out.exists()


BROKEN = {  # name -> (module, export input, dynamic dims, an input at another size)
    "avg-1d": (lambda: pooled_1d(8), (2, 4, 40), {0: "b", 2: "t"}, (1, 4, 48)),
    "max-2d": (lambda: pooled_max_2d((4, 4)), (2, 3, 32, 40), {0: "b", 2: "h", 3: "w"}, (1, 3, 64, 47)),
    # helper 81: no torch.nn pooling class in the module path; the stack trace's innermost call names it
    "functional": (Called, (2, 4, 40), {0: "b", 2: "t"}, (1, 4, 48)),
    "subclass": (lambda: nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), Subclassed(8)), (2, 4, 40), {0: "b", 2: "t"},
                 (1, 4, 48)),
    # timm's SelectAdaptivePool2d('avgmax'): its frame calls timm's adaptive_avgmax_pool2d (helper 81)
    "timm-avgmax": (lambda: _timm_pool("avgmax"), (2, 3, 32, 32), {0: "b", 2: "h", 3: "w"}, (1, 3, 48, 40)),
    # helper 147: called in a function of the model's, read from the op torch.export decomposes it into
    "max-1d-in-a-function": (InAFunction, (2, 4, 12), {0: "b", 2: "t"}, (1, 4, 40)),
    "avg-1d-in-a-function": (lambda: InAFunction(nn.functional.adaptive_avg_pool1d), (2, 4, 40), {0: "b", 2: "t"},
                             (3, 4, 37)),
    # exported where the length was the output size: kernel 1, which a 1-d pool never keeps (helper 81)
    "avg-1d-at-its-size": (lambda: pooled_1d(8), (2, 4, 8), {0: "b", 2: "t"}, (1, 4, 48)),
}


@pytest.mark.parametrize("name", BROKEN)
def test_an_adaptive_pool_fixed_at_the_export_size_is_an_error_and_not_written(name, tmp_path):
    make, shape, dims, other = BROKEN[name]
    torch.manual_seed(0)
    module = make().eval()
    path = export(module, torch.randn(*shape), tmp_path / "m.onnx", dims)
    x = torch.randn(*other)
    (got,) = run(str(path), {"x": x.numpy()})
    assert got.shape != tuple(module(x).shape)  # the export is wrong there: onnxruntime against PyTorch
    found = findings(path)
    assert found and all(f.severity.value == "error" and f.fix is None for f in found), found  # avgmax: both
    assert "the exporter fixed the pool at the export size" in found[0].message
    assert refused(path, tmp_path)


HW = {0: "b", 2: "h", 3: "w"}
BINNED = {  # name -> (module, export input, dynamic dims, {input at another size: what onnxruntime does there})
    # torch.export's unrolled sum over a bin: 7 positions, the most a bin held at 40 frames (helper 83)
    "avg-1d-7-at-40": (lambda: pooled_1d(7), (2, 4, 40), {0: "b", 2: "t"}, {(1, 4, 80): "wrong", (1, 4, 20): "fails"}),
    # every bin one length at 6 frames (4 bins of 2): a mean over them, no mask
    "avg-1d-4-at-6": (lambda: pooled_1d(4), (2, 4, 6), {0: "b", 2: "t"}, {(1, 4, 7): "wrong", (1, 4, 8): "fails"}),
    "functional-7": (lambda: Called(7), (2, 4, 40), {0: "b", 2: "t"}, {(1, 4, 80): "wrong"}),
    "avg-2d-6-at-20x22": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(6)),
                          (2, 3, 20, 22), HW, {(1, 3, 40, 40): "wrong", (1, 3, 24, 26): "fails"}),
    # torchvision's AlexNet: features of 2 by 3 at 96 by 128 (a mean), 5 by 5 at 191 by 193 (a sum over 2 positions)
    "alexnet-96x128": (alexnet, (1, 3, 96, 128), HW, {(1, 3, 160, 200): "wrong", (1, 3, 224, 224): "fails"}),
    "alexnet-191x193": (alexnet, (1, 3, 191, 193), HW, {(1, 3, 400, 400): "wrong"}),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("alexnet") else n
                                  for n in BINNED])
def test_an_adaptive_pool_laid_out_in_bins_at_the_export_size_is_an_error_and_not_written(name, tmp_path):
    make, shape, dims, others = BINNED[name]
    torch.manual_seed(0)
    module = make().eval()
    path = export(module, torch.randn(*shape), tmp_path / "m.onnx", dims)
    for size, what in others.items():  # the export is wrong there: onnxruntime against PyTorch
        x = torch.randn(*size)
        expected = module(x).detach().numpy()
        if what == "fails":  # a Gather out of range
            with pytest.raises(Exception, match="Gather"):
                run(str(path), {"x": x.numpy()})
            continue
        (got,) = run(str(path), {"x": x.numpy()})
        assert got.shape == expected.shape and not np.allclose(got, expected, rtol=1e-4, atol=1e-5), size
    found = findings(path)
    assert found and all(f.severity.value == "error" and f.fix is None for f in found), found
    assert "gathers over bins" in found[0].message and "fixed the pool at the export size" in found[0].message
    assert refused(path, tmp_path)


@pytest.mark.parametrize(("make", "shape", "dims", "other"), [
    (lambda: pooled_1d(1), (2, 4, 40), {0: "b", 2: "t"}, (1, 4, 48)),  # a mean at every size
    (lambda: pooled_1d(8), (2, 4, 40), {0: "b"}, (3, 4, 40)),  # the pooled axis is static
    (lambda: pooled_max_2d(1), (2, 3, 32, 40), {0: "b", 2: "h", 3: "w"}, (1, 3, 50, 37)),  # a max at every size
    (Cropped, (2, 4, 40), {0: "b", 2: "t"}, (1, 4, 23)),  # 16 long at every size: onnx's inference leaves it open
    # helper 83: gathers over bins, laid out as PyTorch lays them out at every size
    (lambda: pooled_1d(7), (2, 4, 40), {0: "b"}, (3, 4, 40)),  # a static axis
    (lambda: Cropped(7), (2, 4, 40), {0: "b", 2: "t"}, (1, 4, 57)),  # 16, which 7 does not divide, at every size
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d((None, 7))), (2, 3, 20, 22),
     {0: "b", 2: "h"}, (1, 3, 31, 22)),  # the dynamic axis kept
    # a model's own pools in a function of its own: torch.export writes them as what they are
    (lambda: InAFunction(lambda h, k: nn.functional.max_pool2d(h.unsqueeze(2), (1, k)).squeeze(2), 3),
     (2, 4, 12), {0: "b", 2: "t"}, (1, 4, 40)),
    (lambda: InAFunction(lambda h, k: nn.functional.avg_pool2d(h, k), 3, nn.Conv2d), (2, 4, 24, 30),
     {0: "b", 2: "h", 3: "w"}, (1, 4, 48, 33)),
    # red team 151: torchvision's RAFT pools its pyramid with `F.avg_pool2d(c, 2, 2)` in a method
    (lambda: InAFunction(lambda h, k: nn.functional.avg_pool2d(h, k, k), 2, nn.Conv2d), (2, 4, 24, 30),
     {0: "b", 2: "h", 3: "w"}, (1, 4, 48, 34)),
    (lambda: InAFunction(lambda h, k: nn.functional.max_pool2d(h, k, return_indices=True)[0], 2, nn.Conv2d),
     (2, 4, 24, 30), {0: "b", 2: "h", 3: "w"}, (1, 4, 48, 34)),
], ids=["to-one", "static-axis", "max-to-one", "cropped-to-16", "bins-static-axis", "bins-cropped-to-16",
        "bins-kept-none", "own-max-2d-over-a-sequence", "own-avg-2d-in-a-function", "own-avg-2d-k-k-in-a-method",
        "own-max-2d-indices-in-a-function"])
def test_an_adaptive_pool_right_at_every_size_is_not_reported(make, shape, dims, other, tmp_path):
    torch.manual_seed(0)
    module = make().eval()
    path = export(module, torch.randn(*shape), tmp_path / "m.onnx", dims)
    x = torch.randn(*other)
    (got,) = run(str(path), {"x": x.numpy()})
    np.testing.assert_allclose(got, module(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert findings(path) == []


@pytest.mark.xfail(strict=True, reason="known miss: a 2-d adaptive pool called in a function of the model's writes "
                   "the graph and metadata of `F.avg_pool2d(x, k, k)` there (red team 151: RAFT's pyramid)")
def test_a_2d_adaptive_pool_called_in_a_function_is_found(tmp_path):
    torch.manual_seed(0)
    module = InAFunction(nn.functional.adaptive_avg_pool2d, (3, 3), nn.Conv2d).eval()
    path = export(module, torch.randn(2, 4, 24, 30), tmp_path / "m.onnx", {0: "b", 2: "h", 3: "w"})
    x = torch.randn(1, 4, 48, 33)
    (got,) = run(str(path), {"x": x.numpy()})
    assert got.shape != tuple(module(x).shape)  # the export is wrong there
    assert refused(path, tmp_path)


def test_a_2d_pool_exported_at_its_output_size_is_the_graph_of_a_kept_none_axis_and_left_alone(tmp_path):
    """`AdaptiveAvgPool2d((4, 4))` fed 4 by 4 with a dynamic H is an AveragePool of kernel 1 that returns H rows,
    not 4; `(None, 4)` writes the same graph, node for node and metadata included, and is right: nothing in the graph
    tells them apart, so neither is reported (helper 83)."""
    graphs = {}
    for size in ((4, 4), (None, 4)):
        torch.manual_seed(0)
        module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(size)).eval()
        path = export(module, torch.randn(2, 3, 4, 4), tmp_path / f"{size[0]}.onnx", {0: "b", 2: "h"})
        x = torch.randn(1, 3, 9, 4)
        (got,) = run(str(path), {"x": x.numpy()})
        assert (got.shape == tuple(module(x).shape)) == (size[0] is None)  # (4, 4) is wrong at 9 rows
        assert findings(path) == []
        graphs[size] = onnx.load(path)
    assert str(graphs[(4, 4)]) == str(graphs[(None, 4)])
