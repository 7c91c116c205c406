"""GF010 on heads resized to sizes traced with `int()` (helpers 103, 105, 106, 107): the output's axes declared
dynamic under names of their own are held at the export size; an error where a length's export size is not known,
a warning where only the batch moves or the given export size shows the size is the model's own."""

from __future__ import annotations

import warnings

import pytest
from test_gf010_trace_baked_broadcast import findings, repair

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch]
nn = torch.nn


class Upsampled(nn.Module):
    """A segmentation head's logits upsampled to `(int(H), int(W))`, as mmsegmentation's `resize` writes it (helper
    103: transformers' SegFormer so; nothing else in the graph tells H and W at export); with a `head` after it, as
    DPT's and DepthAnything's have (helpers 105 and 106: the walk stopped at the Conv, then at all but a 'same' one)."""

    HEADS = {"resize": nn.Identity, "same_conv": lambda: nn.Conv2d(5, 5, 3, padding=1),  # helper 106: the others
             "strided_conv": lambda: nn.Conv2d(5, 5, 3, 2), "transposed": lambda: nn.ConvTranspose2d(5, 5, 2, 2),
             "max_pool": lambda: nn.MaxPool2d(2)}

    def __init__(self, head="resize"):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 4, 4)
        self.head = self.HEADS[head]()

    def forward(self, x):
        size = (int(x.shape[2]), int(x.shape[3]))
        return self.head(nn.functional.interpolate(self.conv(x), size=size, mode="bilinear"))


@pytest.mark.parametrize("head", sorted(Upsampled.HEADS))
@pytest.mark.parametrize(("trace", "severity"), [
    (None, "error"), ((2, 3, 64, 96), "error"), ((2, 3, 40, 56), "warning")])
def test_a_resize_to_sizes_no_input_is_known_to_have_had_is_an_error(tmp_path, trace, severity, head):
    """Written unchanged with exit 0 (the output 64 x 96 at every size) where the output's axes were declared under
    names of their own: where the export size is not known, 64 may be it. Given, it tells: 64 x 96 was the input's
    (an error); at 40 x 56 the model keeps 64 x 96 of its own, and only the declaration is wrong (a warning)."""
    path = tmp_path / "upsampled.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Upsampled(head).eval(), (torch.randn(2, 3, 64, 96),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"},
                                        "y": {0: "batch", 2: "out_h", 3: "out_w"}})
    found = findings(path, trace_shapes=trace and {"x": trace})
    assert [f.severity.value for f in found] == [severity] * 2, [f.message for f in found]
    if trace is None:
        done = repair(path, tmp_path / "out.onnx")
        assert done.returncode == 1 and "GF010" in done.stdout, done.stdout + done.stderr
        assert not (tmp_path / "out.onnx").exists()


class SequenceFirst(nn.Module):
    """Features `[T, B, C]` upsampled to `2 * int(T)` frames (helper 105): the length is the input's axis 0."""

    def forward(self, x):
        return nn.functional.interpolate(x.permute(1, 2, 0), size=2 * int(x.shape[0])).permute(2, 0, 1)


def test_a_length_at_axis_0_whose_export_size_is_not_known_makes_an_error(tmp_path):
    path = tmp_path / "seq_first.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(SequenceFirst().eval(), (torch.randn(32, 2, 4),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "T", 1: "B"}, "y": {0: "frames", 1: "B"}})
    found = findings(path)
    assert [f.severity.value for f in found] == ["error"] and "export size of T is not known" in found[0].message, \
        [f.message for f in found]


class FixedSize(nn.Module):
    """Healthy (helper 106): a static 64 x 96 image, its head resized to 128 x 128 by the model's own numbers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 4, 4)

    def forward(self, x):
        return nn.functional.interpolate(self.conv(x), size=(128, 128), mode="bilinear")


@pytest.mark.parametrize("batch", ["n", "num_images"])
def test_a_fixed_size_where_only_the_batch_moves_is_a_warning(tmp_path, batch):
    """The only dynamic dim leads its input: a batch, whatever its name (`n`, `num_images`, the TorchScript
    exporter's `x_dynamic_axes_1`), whose export size no length is taken for."""
    path = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(FixedSize().eval(), (torch.randn(2, 3, 64, 96),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: batch}, "y": {0: batch, 2: "h", 3: "w"}})
    assert [f.severity.value for f in findings(path)] == ["warning", "warning"]


class MaskedFrames(nn.Module):
    """`ones(int(T), 8)` added to a pooled frame, beside a mask `[time]` whose leading dim is the length (helper 107:
    taken for a batch there, `time` was no unknown length anywhere, and the model was written with exit 0)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(16, 8)

    def forward(self, x, mask):
        return (self.lin(x) * mask[None, :, None]).mean(1, keepdim=True) + torch.ones(int(x.shape[1]), 8)


def test_a_length_that_leads_another_input_is_still_a_length(tmp_path):
    path = tmp_path / "masked.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(MaskedFrames().eval(), (torch.randn(2, 40, 16), torch.ones(40)), str(path), dynamo=False,
                          opset_version=17, input_names=["x", "mask"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "time"}, "mask": {0: "time"},
                                        "y": {0: "batch", 1: "frames"}})
    found = findings(path)
    assert [f.severity.value for f in found] == ["error"] and "export size of time is not known" in found[0].message, \
        [f.message for f in found]
