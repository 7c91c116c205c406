"""GF008 on Pads by uneven constants before a strided window that TF-style 'SAME' padding gives at some lengths only.
transformers' MobileNetV2 (`tf_padding`, the default) computes its pads from `int(x.shape[-2])`, so the TorchScript
export keeps the (0, 1) of an even export size and runs wrong at odd sizes, silently; with its output's axes named
apart it was written with exit 0 and nothing said (stop 56's note). It also pads its 1 x 1 Convs by zeros, which no
model that writes its pads does: an error, and `repair` writes nothing (test_transformers_sweep.py). Stable
Diffusion's VAE downsampler (and transformers' EfficientNet stem) pads (0, 1) at every size and leaves the graph of
such a Pad alone: a warning naming both readings, and written."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run

import graphfix
from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch]
F = torch.nn.functional


def gf008(path, **options):
    return [f for f in graphfix.diagnose(str(path), static=True, **options) if f.rule == "GF008"]


def repair(path, out):
    return CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])


def export(module, path, size=(2, 3, 64, 96)):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(*size),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={
                              "x": {a: n for a, n in {0: "b", 2: "h", 3: "w"}.items() if a < len(size)},
                              "y": {a: n for a, n in {0: "b", 2: "out_h", 3: "out_w"}.items() if a < len(size)}})
    return path


class Downsample(torch.nn.Module):
    """Stable Diffusion's VAE downsampler: a (0, 1) pad at every size, then a 3 x 3 stride-2 Conv."""

    def __init__(self, pads=(0, 1, 0, 1), kernel=3, stride=2):
        super().__init__()
        self.pads, self.conv = pads, torch.nn.Conv2d(3, 8, kernel, stride=stride)

    def forward(self, x):
        return self.conv(F.pad(x, self.pads))


def test_a_pad_of_the_model_s_own_leaves_the_same_graph_and_the_same_warning(tmp_path):
    module = Downsample()
    path = export(module, tmp_path / "vae_down.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, 33, 47)).astype(np.float32)
    with torch.no_grad():  # healthy: the export follows PyTorch at odd sizes
        np.testing.assert_allclose(run(str(path), {"x": x})[0], module(torch.from_numpy(x)).numpy(), atol=1e-5)
    found = gf008(path)
    assert [f.severity.value for f in found] == ["warning"] and "(0, 1)" in found[0].message, found
    assert "Stable Diffusion" in found[0].hint and "graphfix.export(module" in found[0].hint
    done = repair(path, tmp_path / "out.onnx")
    assert done.exit_code == 0 and "warning GF008" in done.output, done.output


@pytest.mark.parametrize("pads, kernel, stride", [
    ((1, 1, 1, 1), 3, 2),  # even amounts: a plain padding=1 (an odd export size's 'SAME' too)
    ((0, 1, 0, 1), 3, 1),  # no stride: 'SAME' pads the same at every length
    ((2, 0, 2, 0), 3, 2),  # an offset of 2 is no residue's 'SAME' for a 3 x 3 window
], ids=["even", "stride-1", "no-residue"])
def test_pads_that_are_no_residue_s_same_padding_are_quiet(tmp_path, pads, kernel, stride):
    assert gf008(export(Downsample(pads, kernel, stride), tmp_path / "m.onnx")) == []


def test_an_export_size_where_the_pads_are_not_same_tells_it_apart(tmp_path):
    """Given the export size (odd: 'SAME' pads (1, 1) there), a (0, 1) pad is not the export size's 'SAME'."""
    path = export(Downsample(), tmp_path / "m.onnx", size=(2, 3, 65, 97))
    assert len(gf008(path)) == 1
    assert gf008(path, trace_shapes={"x": (2, 3, 65, 97)}) == []
    assert len(gf008(path, trace_shapes={"x": (2, 3, 64, 96)})) == 1


def test_a_pad_by_zeros_alone_is_no_finding(tmp_path):
    assert gf008(export(Downsample((0, 0, 0, 0), 1, 1), tmp_path / "m.onnx")) == []



class ZeroPadded(torch.nn.Module):
    """`nn.ZeroPad2d(0)` before a Conv of kernel `kernel` (a layer list's placeholder), then the VAE's downsampler."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.zero, self.conv = torch.nn.ZeroPad2d(0), torch.nn.Conv2d(3, 3, kernel, stride)
        self.down = Downsample()

    def forward(self, x):
        return self.down(self.conv(self.zero(x)))


def test_a_pad_by_zeros_where_same_pads_at_every_length_is_no_sign_of_a_computed_pad(tmp_path):
    """Helper 156: a Pad by zeros before a 3 x 3 stride-2 Conv made the VAE's (0, 1) an error, though 'SAME' pads
    that window by 1 at least at every length (the zeros are no 'SAME' pad computed from the size), and `repair`
    refused a healthy model. Before a 1 x 1 Conv, where 'SAME' pads nothing, they still are."""
    module = ZeroPadded(3, 2).eval()
    path = export(module, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, 45, 51)).astype(np.float32)
    with torch.no_grad():  # healthy at odd sizes
        np.testing.assert_allclose(run(str(path), {"x": x})[0], module(torch.from_numpy(x)).numpy(), atol=1e-5)
    assert [f.severity.value for f in gf008(path)] == ["warning"]
    done = repair(path, tmp_path / "out.onnx")
    assert done.exit_code == 0 and "warning GF008" in done.output, done.output
    pointwise = export(ZeroPadded(1, 1), tmp_path / "k1.onnx")
    assert [f.severity.value for f in gf008(pointwise)] == ["error"]

def mobilenet_v1():
    from fixtures.library_models import PixelOutput, import_transformers

    tf = import_transformers()
    torch.manual_seed(0)
    model = tf.MobileNetV1Model(tf.MobileNetV1Config(depth_multiplier=0.25))
    model.layer = model.layer[:4]  # two stride-2 layers after the stem (the size analysis of all 13 takes 4 s)
    return PixelOutput(model).eval()


def test_mobilenet_v1_exported_with_dynamo_keeps_one_branch_of_its_same_padding_and_is_refused(tmp_path):
    """Red team 155: transformers' MobileNetV1 under torch.export reads each layer's size as a symbol, and keeps
    the branch of `if in_height % stride == 0:` taken at export (its guard dropped by torch.onnx): a layer of odd
    size at export pads `max(3 - n % 2, 0)` at every size, a whole 3 at even n where PyTorch pads 1. No record
    tells it (`VR[32, 512]`); written with exit 0, wrong at 96 x 100. The amounts vary with the size yet are
    'SAME' at odd lengths only: an error."""
    module = mobilenet_v1()
    path = tmp_path / "mnv1.onnx"
    dim = torch.export.Dim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 3, 66, 70),), str(path), dynamo=True, input_names=["x"],
                          dynamic_shapes={"x": {0: dim("B"), 2: dim("H", min=32, max=512),
                                                3: dim("W", min=32, max=512)}})
    x = np.random.default_rng(0).standard_normal((1, 3, 96, 100)).astype(np.float32)
    with torch.no_grad():  # the trap: another branch at 96 x 100 (values near 1e-25 from the library's init)
        got, want = run(str(path), {"x": x})[0], module(torch.from_numpy(x)).numpy()
        assert got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=0)
    found = [f for f in gf008(path) if f.severity.value == "error"]
    assert found and "amounts computed from it" in found[0].message, found
    assert "at even lengths they pad (1, 2), 'SAME' (0, 1)" in found[0].message, found[0].message
    assert repair(path, tmp_path / "out.onnx").exit_code == 1 and not (tmp_path / "out.onnx").exists()


class BranchFree(torch.nn.Module):
    """'SAME' padding as timm's `pad_same` computes it from the traced size: right at every size."""

    def __init__(self):
        from fixtures.library_models import import_timm

        super().__init__()
        self.conv, self.pad = torch.nn.Conv2d(3, 8, 3, stride=2), import_timm().layers.pad_same

    def forward(self, x):
        return self.conv(self.pad(x, [3, 3], [2, 2]))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_same_padding_computed_branch_free_is_no_finding(tmp_path, dynamo):
    module, path = BranchFree().eval(), tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 3, 64, 97),), str(path), dynamo=dynamo, input_names=["x"],
                          **({"dynamic_shapes": {"x": {0: torch.export.Dim("B"), 2: torch.export.Dim("H"),
                                                       3: torch.export.Dim("W")}}} if dynamo else
                             {"dynamic_axes": {"x": {0: "b", 2: "h", 3: "w"}}}))
    for shape in ((1, 3, 33, 40), (2, 3, 50, 51)):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            np.testing.assert_allclose(run(str(path), {"x": x})[0], module(torch.from_numpy(x)).numpy(), atol=1e-5)
    assert gf008(path) == []


class Strided1d(torch.nn.Module):
    """A pad before a 1-d window, then a kernel-1 Conv padded by zeros (a pad computed in Python, say)."""

    def __init__(self, pads, kernel, stride):
        super().__init__()
        self.pads, self.down, self.mix = pads, torch.nn.Conv1d(4, 4, kernel, stride), torch.nn.Conv1d(4, 4, 1)

    def forward(self, x):
        return self.mix(F.pad(self.down(F.pad(x, self.pads)), (0, 0)))


def test_a_pad_a_window_never_reads_is_no_finding(tmp_path):
    """Red team 156: (0, 1) before a 2-wide window of stride 2 reads what (0, 0) reads at even lengths (the padded
    element is never read), so it is 'SAME' at every length; it was an error beside a Pad by zeros."""
    path = export(Strided1d((0, 1), 2, 2), tmp_path / "m.onnx", size=(2, 4, 40))
    assert gf008(path) == []
    assert len(gf008(export(Strided1d((0, 1), 3, 2), tmp_path / "k3.onnx", size=(2, 4, 40)))) == 1


def test_pads_of_an_opset_10_pad_and_a_window_s_own_are_read(tmp_path):
    """Red team 156: an opset-10 Pad holds its amounts in an attribute (GF008 crashed on it); the dynamo exporter
    merges the Pad into the Conv's own pads, where the graph holds no Pad at all (it said nothing)."""
    module, path, old = Strided1d((0, 1), 3, 2).eval(), tmp_path / "dynamo.onnx", tmp_path / "opset10.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 4, 40),), str(old), dynamo=False, opset_version=10,
                          input_names=["x"], dynamic_axes={"x": {0: "b", 2: "t"}})
        torch.onnx.export(module, (torch.randn(2, 4, 40),), str(path), dynamo=True, input_names=["x"],
                          dynamic_shapes={"x": {0: torch.export.Dim("B"), 2: torch.export.Dim("T")}})
    assert [f.severity.value for f in gf008(old)] == ["error"]  # beside the Pad by zeros
    found = gf008(path)
    assert [f.severity.value for f in found] == ["warning"] and "its own pads" in found[0].message, found


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3] * 5, "strides": [2] * 5, "dilations": [1] * 5},  # more window axes than the input has
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 0, 1]},  # an odd number of own pads
    {"kernel_shape": [3, 3], "strides": [2, 2], "dilations": [0, -1]},
    {"kernel_shape": [10**18, 3], "strides": [2, 2]},
], ids=["long-kernel", "odd-pads", "bad-dilations", "huge-kernel"])
def test_a_window_s_hostile_attributes_are_read_without_a_crash(attrs):
    """A model's attributes are hostile input: what the 'SAME' reading cannot use it leaves, one window at a time."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "p"], ["xp"]), helper.make_node("Conv", ["xp", "w"], ["y"], **attrs)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], [0.1] * 108),
         helper.make_tensor("p", TensorProto.INT64, [8], [0, 0, 0, 0, 0, 0, 1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    found = [f for f in graphfix.diagnose(model, static=True) if f.rule == "GF008"]
    assert all(f.severity.value == "warning" for f in found), found
