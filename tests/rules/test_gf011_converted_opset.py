"""GF011 where the dynamo export was converted to an older opset (helper 89). `torch.onnx.export(..., dynamo=True,
opset_version=17)` runs a version conversion that drops every node's metadata (module path, stack trace), which
is what GF011 read: `AdaptiveAvgPool1d(7)` at 40 frames (gathers over bins) and AlexNet at 191 by 193 were found
by nothing, and `repair` wrote them with exit 0.

Without metadata the graph's structure decides. Bins: a GatherND of windows whose positions are computed from the
input's length at run time, then a sum over the windows unrolled for a fixed count of positions while the windows'
length grows with the input: one hypothesis (an adaptive pool laid out at the export size), an error. A mean over
whole windows of one length is also a model's own windows: a warning. Pool: `adaptive_avg_pool1d` whose size
divides the length is a 2-d pool of kernel (1, k) between an Unsqueeze and a Squeeze, `nn.AvgPool1d` a 1-d pool;
a model may write the first itself, so a warning; a 2-d adaptive pool is node for node `nn.AvgPool2d`: nothing.
Controls: plain pools, a pool to 1, a static or cropped axis, torchvision's resnet18 and mobilenet_v3_small."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import run
from test_gf011_adaptive_pool_specialized import Cropped, alexnet, findings, pooled_1d, refused

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch]
nn = torch.nn
T = {0: "b", 2: "t"}
HW = {0: "b", 2: "h", 3: "w"}


def export(module, example, path, dims, opset=17):
    """The dynamo exporter, converted down to `opset`."""
    torch.onnx.export(module.eval(), (example,), str(path), dynamo=True, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": dims}, opset_version=opset)
    return path


def without_metadata(path):
    """What the version conversion does to every node it converts."""
    model = onnx.load(path)
    assert any(node.metadata_props for node in model.graph.node)
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, path)
    return path


BINNED = {  # name -> (module, export input, dynamic dims, an input where onnxruntime differs from PyTorch)
    "avg-1d-7-at-40": (lambda: pooled_1d(7), (2, 4, 40), T, (1, 4, 80)),
    "avg-2d-6-at-20x22": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(6)),
                          (2, 3, 20, 22), HW, (1, 3, 40, 40)),
    "alexnet-191x193": (alexnet, (1, 3, 191, 193), HW, (1, 3, 400, 400)),  # a sum over 2 positions
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("alexnet") else n
                                  for n in BINNED])
def test_bins_summed_over_a_fixed_count_without_metadata_are_an_error_and_not_written(name, tmp_path):
    make, shape, dims, other = BINNED[name]
    torch.manual_seed(0)
    module = make().eval()
    path = export(module, torch.randn(*shape), tmp_path / "m.onnx", dims)
    model = onnx.load(path)
    assert model.opset_import[0].version == 17
    assert not any(node.metadata_props for node in model.graph.node if node.op_type == "GatherND")
    x = torch.randn(*other)
    (got,) = run(str(path), {"x": x.numpy()})
    expected = module(x).detach().numpy()
    assert got.shape == expected.shape and not np.allclose(got, expected, rtol=1e-4, atol=1e-5)
    found = findings(path)
    assert found and all(f.severity.value == "error" and f.fix is None for f in found), found
    assert "no metadata" in found[0].message and "fixed the pool at the export size" in found[0].message
    assert refused(path, tmp_path)


def test_a_mean_over_bins_of_one_length_without_metadata_is_a_warning(tmp_path):
    """`AdaptiveAvgPool1d(4)` at 6 frames: bins of 2, a mean over each (the converter does not convert its
    ReduceMean, so the metadata is dropped here as it drops it): wrong at 7, but windows of one length averaged
    may be a model's own."""
    torch.manual_seed(0)
    module = pooled_1d(4).eval()
    path = without_metadata(export(module, torch.randn(2, 4, 6), tmp_path / "m.onnx", T, opset=18))
    x = torch.randn(1, 4, 7)
    (got,) = run(str(path), {"x": x.numpy()})
    assert not np.allclose(got, module(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    found = findings(path)
    assert [f.severity.value for f in found] == ["warning"] and "does not say which" in found[0].message


@pytest.mark.parametrize("pool", [nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d])
def test_a_1d_adaptive_pool_written_as_a_pool_without_metadata_is_a_warning(pool, tmp_path):
    """`AdaptiveAvgPool1d(8)` at 40 frames: a 2-d pool of kernel (1, 5), 9 positions at 48. The same graph is a
    model's own `AvgPool2d((1, 5))` on an unsqueezed input, so not an error."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), pool(8)).eval()
    path = export(module, torch.randn(2, 4, 40), tmp_path / "m.onnx", T)
    assert not any(node.metadata_props for node in onnx.load(path).graph.node)
    x = torch.randn(1, 4, 48)
    (got,) = run(str(path), {"x": x.numpy()})
    assert got.shape != tuple(module(x).shape)
    found = findings(path)
    assert [f.severity.value for f in found] == ["warning"], found
    assert "kernel and stride 5" in found[0].message and "no metadata" in found[0].message


class Pooled2d(nn.Module):
    """A model's own 2-d pool of kernel (1, 5) over an unsqueezed sequence."""

    def __init__(self):
        super().__init__()
        self.conv, self.pool = nn.Conv1d(4, 4, 3, padding=1), nn.AvgPool2d((1, 5))

    def forward(self, x):
        return self.pool(self.conv(x).unsqueeze(-2)).squeeze(-2)


HEALTHY = {  # name -> (module, export input, dynamic dims, another input, opset)
    "avgpool1d": (lambda: nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.AvgPool1d(5)), (2, 4, 40), T, (1, 4, 48),
                  17),
    "avgpool2d": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AvgPool2d((8, 10))), (2, 3, 32, 40), HW,
                  (1, 3, 48, 50), 17),
    "adaptive-to-one": (lambda: pooled_1d(1), (2, 4, 40), T, (1, 4, 48), 17),
    "bins-static-axis": (lambda: pooled_1d(7), (2, 4, 40), {0: "b"}, (3, 4, 40), 17),
    "bins-cropped-to-16": (lambda: Cropped(7), (2, 4, 40), T, (1, 4, 57), 17),
}


@pytest.mark.parametrize("name", HEALTHY)
def test_pools_right_at_every_size_converted_to_opset_17_are_not_reported(name, tmp_path):
    make, shape, dims, other, opset = HEALTHY[name]
    torch.manual_seed(0)
    module = make().eval()
    path = export(module, torch.randn(*shape), tmp_path / "m.onnx", dims, opset)
    x = torch.randn(*other)
    (got,) = run(str(path), {"x": x.numpy()})
    np.testing.assert_allclose(got, module(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert findings(path) == []


def test_a_models_own_2d_pool_over_an_unsqueezed_sequence_is_only_a_warning(tmp_path):
    """Right at every size, and node for node the graph of the adaptive pool above: not an error."""
    torch.manual_seed(0)
    module = Pooled2d().eval()
    path = export(module, torch.randn(2, 4, 40), tmp_path / "m.onnx", T)
    x = torch.randn(1, 4, 48)
    (got,) = run(str(path), {"x": x.numpy()})
    np.testing.assert_allclose(got, module(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert [f.severity.value for f in findings(path)] == ["warning"]


@pytest.mark.parametrize("pool", [nn.AvgPool2d((1, 4), stride=(1, 2)), nn.MaxPool2d((1, 3), padding=(0, 1))],
                         ids=["strided", "padded"])
def test_a_models_own_pool_of_another_stride_over_an_unsqueezed_sequence_is_not_reported(pool, tmp_path):
    """An adaptive pool whose size divides the length is a pool of stride k, unpadded: one of stride 2 and kernel
    4, or padded, is the model's own (helper 90's review)."""
    torch.manual_seed(0)
    module = Pooled2d().eval()
    module.pool = pool
    path = export(module, torch.randn(2, 4, 40), tmp_path / "m.onnx", T)
    assert findings(path) == []


def test_a_torchscript_max_pool_over_an_unsqueezed_sequence_is_worded_as_what_it_may_be(tmp_path):
    """The TorchScript exporter writes no metadata at all: the warning says so, and names the max pool's adaptive
    twin, not `AdaptiveAvgPool1d` and a conversion to an older opset only (helper 90)."""
    module = Pooled2d().eval()
    module.pool = nn.MaxPool2d((1, 2))
    path = tmp_path / "m.onnx"
    torch.onnx.export(module, (torch.randn(2, 4, 40),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": T})
    [found] = findings(path)
    assert found.severity.value == "warning" and "TorchScript export writes none" in found.message, found
    assert "AdaptiveMaxPool1d(n)" in found.message and "nn.MaxPool1d" in found.message, found


@pytest.mark.slow
@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_classifiers_converted_down_are_not_reported(name, opset, tmp_path):
    from fixtures.torchvision_models import register_ops

    register_ops()
    import torchvision

    torch.manual_seed(0)
    module = getattr(torchvision.models, name)(weights=None).eval()
    path = export(module, torch.randn(1, 3, 96, 128), tmp_path / "m.onnx", HW, opset)
    found = [f for f in findings(path) if f.severity.value != "info"]
    assert found == []
