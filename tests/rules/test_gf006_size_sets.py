"""GF006: a constant whose rows are the sizes of the graph's feature maps at the export size (red team, helper 82).

transformers' DeformableDetr divides its sampling offsets by `offset_normalizer`, each level's (width, height)
stacked from Python ints while tracing; the TorchScript exporter folds it to `[[12, 8], [6, 4], [3, 2]]` at 64x96.
It broadcasts at every size, so onnxruntime runs everywhere and is wrong at every other image size, and graphfix
said "no findings" and wrote it unchanged with exit 0. Now it is an error (with --trace-shape, and without it where
several levels determine one export size); the default repair exits 1 and writes nothing; the rebuild from Shape
ops is unsafe, and with `--unsafe-fixes --force` it matches PyTorch at other sizes, batch 1 and larger images.
A model's own numbers (a learned scale, strides, one size that coincides) and sizes built from traced shapes stay
quiet.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run

import graphfix
from graphfix.cli import cli

torch = pytest.importorskip("torch")
nn = torch.nn
pytestmark = pytest.mark.torch

EXPORT = (2, 3, 24, 40)  # feature maps 12x20 and 6x10
OTHER = ((1, 3, 40, 24), (3, 3, 56, 72), (1, 3, 64, 64))  # batch 1, transposed, larger


class Pyramid(nn.Module):
    """Two strided convs and a head whose offsets are divided by each level's (width, height): `sizes(h1, h2)`."""

    def __init__(self, sizes):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1)
        self.head, self.sizes = nn.Linear(4, 4), sizes
        self.scale = nn.Parameter(torch.rand(2, 2) + 0.5)  # divides where `sizes` is None: a learned scale

    def forward(self, x):
        h1 = self.conv1(x)
        h2 = self.conv2(h1)
        return self.head(h2.mean((2, 3))).view(-1, 2, 2) / (self.scale if self.sizes is None else self.sizes(h1, h2))


def baked(h1, h2):  # DeformableDetr's spatial_shapes: Python ints while tracing
    return torch.tensor([[int(h.shape[-1]), int(h.shape[-2])] for h in (h1, h2)], dtype=torch.float32)


def last_index(h1, h2):  # align_corners' `2 * x / (W - 1) - 1`: each size less 1 (helper 85)
    return torch.tensor([[int(h.shape[-1]) - 1, int(h.shape[-2]) - 1] for h in (h1, h2)], dtype=torch.float32)


def traced(h1, h2):  # the same sizes read from the traced shapes: healthy
    return torch.stack([torch._shape_as_tensor(h)[-2:].flip(0) for h in (h1, h2)]).float()


def one_map(h1, h2):  # both dims of one feature map
    return torch.tensor([int(h2.shape[-1]), int(h2.shape[-2])], dtype=torch.float32)


def strides(h1, h2):  # a model's own integers
    return torch.tensor([[2.0, 2.0], [4.0, 4.0]])


def coincidence(h1, h2):  # a fixed scale one of whose numbers is a size at the export size (20)
    return torch.tensor([[20.0, 5.0], [7.0, 3.0]])


def _export(module, path, size=EXPORT):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(*size),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 2: "H", 3: "W"}, "y": {0: "B"}})
    return str(path)


def own_square(h1, h2):  # a model's own (6, 6), a stride or a grid, that a square export's 6 by 6 map equals
    return torch.tensor([6.0, 6.0])


def _errors(path, *, traced_at=EXPORT):
    shapes = {"x": traced_at} if traced_at else None
    return [f for f in graphfix.diagnose(path, static=True, trace_shapes=shapes)
            if f.rule == "GF006" and f.severity.value == "error"]


def _matches_torch(module, path, sizes=OTHER, rtol=1e-4):
    for size in sizes:
        x = np.random.default_rng(sum(size)).standard_normal(size).astype(np.float32)
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(run(path, {"x": x})[0], expected, rtol=rtol, atol=1e-5)


def _refused_then_rebuilt(module, path, tmp_path, *given: str) -> None:
    out = tmp_path / "out.onnx"
    done = CliRunner().invoke(cli, ["repair", path, "-o", str(out), *given])
    assert done.exit_code == 1 and not out.exists(), done.output
    done = CliRunner().invoke(cli, ["repair", path, "-o", str(out), "--unsafe-fixes", "--force", *given])
    assert "applied GF006" in done.output and out.exists(), done.output
    _matches_torch(module, str(out))


def test_levels_sizes_folded_from_python_ints_are_an_error(tmp_path):
    module = Pyramid(baked)
    path = _export(module, tmp_path / "pyramid.onnx")
    with pytest.raises(AssertionError):
        _matches_torch(module, path)  # onnxruntime runs at every size, with the export's sizes
    (finding,) = _errors(path)
    assert "[20, 12]" in finding.message and "[10, 6]" in finding.message, finding.message
    assert finding.fix is not None and finding.fix.safety.value == "unsafe"
    (alone,) = _errors(path, traced_at=None)  # two levels, not square: one export size holds every row
    assert alone.fix is None and "H in [" in alone.message, alone.message
    _refused_then_rebuilt(module, path, tmp_path, "--trace-shape", "x=2x3x24x40")


def test_levels_sizes_less_one_folded_from_python_ints_are_an_error(tmp_path):
    module = Pyramid(last_index)
    path = _export(module, tmp_path / "last.onnx")
    with pytest.raises(AssertionError):
        _matches_torch(module, path)
    (finding,) = _errors(path)
    assert "[19, 11]" in finding.message and "[9, 5]" in finding.message, finding.message
    assert finding.fix is not None and finding.fix.safety.value == "unsafe"
    assert len(_errors(path, traced_at=None)) == 1
    _refused_then_rebuilt(module, path, tmp_path, "--trace-shape", "x=2x3x24x40")


def test_both_sizes_of_one_map_are_an_error_where_the_export_size_is_given(tmp_path):
    module = Pyramid(one_map)
    path = _export(module, tmp_path / "one.onnx")
    (finding,) = _errors(path)
    assert "[10, 6]" in finding.message, finding.message
    assert not _errors(path, traced_at=None)  # one pair fits some export size always: no evidence alone
    _refused_then_rebuilt(module, path, tmp_path, "--trace-shape", "x=2x3x24x40")


def test_one_square_row_equal_to_a_square_map_at_a_given_size_stays_quiet(tmp_path):
    """One square row is no matched set even at a given size: a 4 by 4 map and anchors' stride 4 are alike."""
    size = (2, 3, 24, 24)  # feature maps 12x12 and 6x6
    path = _export(Pyramid(own_square), tmp_path / "square.onnx", size)
    assert not _errors(path, traced_at=size) and not _errors(path, traced_at=None)


class FixedResolution(nn.Module):
    """Resizes every input to a fixed size and reads that size back as Python ints (torchvision's SSD resizes to
    `fixed_size` and builds its anchors so): healthy at every size, helper 85. `pyramid`: a stem conv first, then two
    levels of a fixed pyramid (12 by 8, 6 by 4), which the search without --trace-shape took for an export size."""

    def __init__(self, pyramid: bool):
        super().__init__()
        torch.manual_seed(0)
        self.pyramid = pyramid
        self.stem, self.c1, self.c2 = nn.Conv2d(3, 3, 3, 2, 1), nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1)
        self.head = nn.Linear(4, 4)

    def forward(self, x):
        if not self.pyramid:
            y = nn.functional.interpolate(x, size=(64, 96), mode="bilinear", align_corners=False)
            size = torch.tensor([int(y.shape[-1]), int(y.shape[-2])], dtype=torch.float32)
            return self.head(self.c1(y).mean((2, 3))).view(-1, 2, 2) / size
        y = nn.functional.interpolate(self.stem(x), size=(24, 16), mode="bilinear", align_corners=False)
        h1 = self.c1(y)
        h2 = self.c2(h1)
        sizes = torch.tensor([[int(h.shape[-1]), int(h.shape[-2])] for h in (h1, h2)], dtype=torch.float32)
        return self.head(h2.mean((2, 3))).view(-1, 2, 2) / sizes


@pytest.mark.parametrize("pyramid", [False, True], ids=["resized-to-64x96", "fixed-pyramid"])
def test_sizes_a_model_holds_fixed_at_every_size_stay_quiet(pyramid, tmp_path):
    module = FixedResolution(pyramid).eval()
    size = (1, 3, 16, 24) if pyramid else (1, 3, 64, 96)  # the second exported at its own resolution
    path = _export(module, tmp_path / "fixed.onnx", size)
    _matches_torch(module, path)
    assert not _errors(path, traced_at=size) and not _errors(path, traced_at=None)


@pytest.mark.parametrize("sizes", [traced, None, strides, coincidence],
                         ids=["from-traced-shapes", "learned-scale", "strides", "one-size-by-coincidence"])
def test_a_models_own_scale_or_traced_sizes_stay_quiet(sizes, tmp_path):
    module = Pyramid(sizes)
    path = _export(module, tmp_path / "quiet.onnx")
    assert not _errors(path) and not _errors(path, traced_at=None)
    if sizes is traced:
        _matches_torch(module, path)


def test_transformers_deformable_detr_is_an_error_and_rebuilt_only_when_asked(tmp_path):
    from fixtures.library_models import PixelOutput, import_transformers

    tf = import_transformers()
    torch.manual_seed(0)
    backbone = tf.ResNetConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], embedding_size=8,
                               out_features=["stage2", "stage3", "stage4"])
    config = tf.DeformableDetrConfig(
        use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=32,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, num_queries=10, num_feature_levels=3, encoder_n_points=2, decoder_n_points=2)
    module = PixelOutput(tf.DeformableDetrModel(config)).eval()
    path = str(tmp_path / "deformable.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 3, 64, 96),), path, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 2: "H", 3: "W"}, "y": {0: "B"}})
    sizes = ((2, 3, 96, 64), (1, 3, 128, 128), (3, 3, 64, 160))
    with pytest.raises(AssertionError):
        _matches_torch(module, path, sizes[:1], rtol=1e-3)  # 0.135 relative, with the export's levels
    found = _errors(path, traced_at=(2, 3, 64, 96))
    assert len(found) == 2 and all("[12, 8]" in f.message and "[3, 2]" in f.message for f in found)  # both Divs
    assert len(_errors(path, traced_at=None)) == 2  # three levels determine the export size
    out = tmp_path / "out.onnx"
    done = CliRunner().invoke(cli, ["repair", path, "-o", str(out)])
    assert done.exit_code == 1 and not out.exists(), done.output
    done = CliRunner().invoke(cli, ["repair", path, "-o", str(out), "--unsafe-fixes", "--force",
                                    "--trace-shape", "x=2x3x64x96"])
    assert done.output.count("applied GF006") == 2, done.output
    _matches_torch(module, str(out), sizes, rtol=1e-3)
