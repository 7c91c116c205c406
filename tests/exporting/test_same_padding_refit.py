"""TF-style 'SAME' padding computed in Python, rebuilt by graphfix.export from traces of the module (#22).

transformers' MobileNetV2 (`tf_padding`, the default) pads each strided Conv by amounts computed from
`int(x.shape[-2])`: a TorchScript export keeps the export size's, (0, 1) at an even size, wrong at odd ones. The
graph cannot tell them from a pad the model always makes (Stable Diffusion's VAE: GF008 refuses the one and warns
on the other, tests/rules/test_gf008_same_padding.py); the module can. Checked by onnxruntime against the module
at odd sizes, which no trace at 4x and 5x an even size reached.
"""

from __future__ import annotations

import io
import itertools
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")

import graphfix  # noqa: E402
from graphfix.exporting.fit import Fit, Same, Term, fits  # noqa: E402
from graphfix.exporting.rebuild import _Builder  # noqa: E402

pytestmark = [pytest.mark.torch]
BASE = {"B": 2, "H": 64}


def tf_same(reach: int, stride: int, length: int) -> tuple[int, int]:
    """transformers' `apply_tf_padding`, as written there."""
    if length % stride == 0:
        total = max(reach - stride, 0)
    else:
        total = max(reach - (length % stride), 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize("reach, stride", [(3, 2), (5, 2), (2, 2), (3, 3), (7, 4), (2, 4)])
def test_same_is_tf_s_padding_at_every_length(reach, stride):
    for length in range(1, 200):
        assert (Same(reach, stride, False).of(length), Same(reach, stride, True).of(length)) == \
            tf_same(reach, stride, length)
    lengths = np.arange(1, 200)
    assert Same(reach, stride, True).of(lengths).tolist() == [tf_same(reach, stride, n)[1] for n in lengths]


@pytest.mark.parametrize("k, r, reach, stride, end", [(4, 3, 3, 2, False), (1, 0, 3, 2, False), (2, 1, 5, 2, False),
                                                      (8, 7, 7, 4, False), (1, 0, 3, 3, True)])
def test_a_same_pad_over_a_length_is_among_the_fits_of_refit_s_traces(k, r, reach, stride, end):
    """The begin of a 3 x 3 stride-2 window's 'SAME' pad over ceil(H / 4), at refit's first traces (export, 4x,
    5x and one past the export size) and the sizes a split adds: the function itself is among the fits, checked
    at every size up to 8 times the export."""
    def function(sizes):
        return tf_same(reach, stride, (sizes["H"] + r) // k)[end]

    points = [BASE, *({**BASE, "H": h} for h in (256, 320, 65, 66, 67, 69, 73))]
    found = fits([(sizes, function(sizes)) for sizes in points], BASE)
    grid = [{**BASE, "H": h} for h in range(1, 8 * BASE["H"] + 1)]
    assert any(fit.same and all(fit.at(s) == function(s) for s in grid) for fit in found), [str(f) for f in found]


def test_a_pad_that_stays_and_values_past_any_pad_have_no_same_fit():
    assert fits([({**BASE, "H": h}, 1) for h in (64, 256, 320, 65)], BASE) == []  # the model's own number
    found = fits([({**BASE, "H": h}, h) for h in (64, 256, 320, 65)], BASE)
    assert found and not any(f.same for f in found)  # the length itself, no pad


@pytest.mark.parametrize("fit", [Fit((Term("H", 4, 3),), same=Same(3, 2, False)),
                                 Fit((Term("H", 2, 1),), same=Same(5, 2, True)),
                                 Fit((Term("H"),), same=Same(2, 4, False)), Fit((Term("H"),), same=Same(7, 3, True))],
                         ids=str)
def test_the_rebuilt_pad_computes_the_fit_at_every_size(fit):
    """The nodes refit writes for a 'SAME' fit, run by onnxruntime from a size of 0 up, against `Fit.at`."""
    build = _Builder({"H": ("x", 1, 64)})
    out = build.fit(fit, "pad")
    graph = helper.make_graph(build.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "H"])],
                              [helper.make_tensor_value_info(out, TensorProto.INT64, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for h in range(0, 130):
        assert session.run(None, {"x": np.zeros((1, h), np.float32)})[0].tolist() == [fit.at({"H": h})], h


F = torch.nn.functional
AXES = {"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b", 2: "out_h", 3: "out_w"}}
ODD = ((1, 3, 65, 67), (2, 3, 97, 96), (1, 3, 33, 35), (3, 3, 130, 71))  # batch 1, longer than the export's 64


def mobilenet_v2():
    """transformers' MobileNetV2: its stem and first block (two stride-2 Convs padded 'SAME', 1 x 1 ones padded
    by zeros), weights drawn large enough that the outputs are far from 0 (the library's init makes them ~1e-25,
    where any two models agree)."""
    from fixtures.library_models import PixelOutput, import_transformers

    tf = import_transformers()
    torch.manual_seed(0)
    model = tf.MobileNetV2Model(tf.MobileNetV2Config(depth_multiplier=0.35, image_size=64))
    model.layer, model.conv_1x1 = model.layer[:1], torch.nn.Identity()
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.dim() > 1):
            weight.normal_(0, 0.3)
    return PixelOutput(model).eval()


class Downsample(torch.nn.Module):
    """Stable Diffusion's VAE downsampler: a (0, 1) pad at every size, then a 3 x 3 stride-2 Conv."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def matches(session: ort.InferenceSession, module, shape) -> bool:
    """onnxruntime against the module, sharing no code with graphfix, at outputs far from 0."""
    x = torch.randn(*shape)
    with torch.no_grad():
        want = module(x).numpy()
    assert np.abs(want).max() > 0.1, np.abs(want).max()
    try:
        got = session.run(None, {"x": x.numpy()})[0]
    except Exception:
        return False
    return got.shape == want.shape and np.allclose(got, want, rtol=1e-3, atol=1e-4)


def plain_export(module) -> ort.InferenceSession:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 3, 64, 64),), buffer, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes=AXES)
    return ort.InferenceSession(onnx.load_from_string(buffer.getvalue()).SerializeToString(),
                                providers=["CPUExecutionProvider"])


class SamePadded1d(torch.nn.Module):
    """A Conv1d after a pad computed in Python from `int(x.shape[-1])`, as `pads(T)` gives it (begin, end)."""

    def __init__(self, pads, kernel=3, stride=2):
        super().__init__()
        self.pads, self.conv = pads, torch.nn.Conv1d(4, 8, kernel, stride=stride)
        with torch.no_grad():
            self.conv.weight.normal_(0, 0.5)

    def forward(self, x):
        return self.conv(F.pad(x, self.pads(int(x.shape[-1]))))


@pytest.mark.parametrize("pads, kernel, stride", [
    (lambda t: tf_same(3, 2, t), 3, 2),
    (lambda t: tf_same(3, 2, t)[::-1], 3, 2),  # the extra pad first
    (lambda t: tf_same(2, 2, t), 2, 2),  # (0, 0) at the export size
    (lambda t: tf_same(7, 4, t), 7, 4),
], ids=["tf", "extra-first", "none-at-export", "stride-4"])
def test_a_same_pad_of_an_even_export_size_is_rebuilt(tmp_path, pads, kernel, stride):
    """Red team 157: a single stride-2 front end's proof takes one past the export size (half its stride past),
    where refit traced to break parity; it traces at the next odd distance the proof does not take."""
    torch.manual_seed(0)
    module, path = SamePadded1d(pads, kernel, stride).eval(), tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = graphfix.export(module, (torch.randn(2, 4, 64),), path, input_names=["x"], output_names=["y"],
                                 dynamic_axes={"x": {0: "B", 2: "T"}, "y": {0: "B", 2: "N"}})
    assert report.ok and any("'SAME' padding over" in line for line in report.refitted), report.summary()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert all(matches(session, module, (b, 4, t)) for b in (1, 3) for t in (*range(stride + 1, 80), 201, 499))


class SameStack1d(torch.nn.Module):
    """Three stride-2 Conv1d, each after transformers' 'SAME' pad of its input's length: the deeper pads move with
    the parity of ceil(T / 2) and ceil(T / 4), which no trace one past an odd export size changes."""

    def __init__(self):
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv1d(4, 4, 3, stride=2) for _ in range(3))
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.normal_(0, 0.5)

    def forward(self, x):
        for conv in self.convs:
            x = conv(F.pad(x, tf_same(3, 2, int(x.shape[-1]))))
        return x


@pytest.mark.parametrize("length", [63, 64, 100])
def test_the_pads_of_a_same_stack_are_rebuilt_at_odd_and_even_export_sizes(tmp_path, length):
    torch.manual_seed(0)
    module, path = SameStack1d().eval(), tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = graphfix.export(module, (torch.randn(2, 4, length),), path, input_names=["x"],
                                 output_names=["y"], dynamic_axes={"x": {0: "B", 2: "T"}, "y": {0: "B", 2: "N"}})
    assert report.ok and sum("'SAME' padding over" in line for line in report.refitted) == 3, report.summary()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert all(matches(session, module, (b, 4, t)) for b in (1, 3) for t in (*range(8, 90), 201, 499))


@pytest.mark.slow
def test_mobilenet_v2_s_same_pads_are_rebuilt_from_traces_of_the_module(tmp_path):
    module, path = mobilenet_v2(), tmp_path / "mobilenet_v2.onnx"
    plain = plain_export(module)  # the trap: the trace's pads are the even size's, wrong at odd ones
    assert matches(plain, module, (1, 3, 64, 96)) and not any(matches(plain, module, shape) for shape in ODD)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = graphfix.export(module, (torch.randn(2, 3, 64, 64),), path, input_names=["x"], output_names=["y"],
                                 dynamic_axes=AXES)
    assert report.ok and report.status == "repaired", report.summary()
    assert sum("'SAME' padding over" in line for line in report.refitted) == 2, report.refitted
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert all(matches(session, module, shape) for shape in itertools.chain(ODD, [(1, 3, 64, 96)]))
    assert [f for f in graphfix.diagnose(str(path), static=True) if f.rule == "GF008"] == []



def bit():
    """transformers' BiT with `global_padding="SAME"` (ViT-hybrid's and DPT-hybrid's backbone): its DynamicPad2d
    pads by `(math.ceil(n / s) - 1) * s + k - n`, whose ceiling the trace bakes, so each Pad's amounts are
    `c - n` with c the export size's; the last stage's c reads `ceil(H / 32)` (helper 159)."""
    from fixtures.library_models import import_transformers

    tf = import_transformers()
    torch.manual_seed(0)
    config = tf.BitConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                          layer_type="bottleneck", global_padding="SAME", embedding_dynamic_padding=True,
                          num_groups=4)
    model = tf.BitModel(config)
    with torch.no_grad():
        for weight in model.parameters():
            weight.normal_(0, 0.1)

    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x).last_hidden_state

    return Features().eval()


@pytest.mark.slow
def test_bit_s_same_pads_are_rebuilt_through_its_last_stage(tmp_path):
    """Each Pad's `c - n`, c moving as `2 * ceil(h / 2**i) + 1` down to ceil(h / 32): fitted now that the
    family's divisors reach 32 (refused before: 'moves as no size expression does'), and right at sizes no trace
    or proof used, where the plain export pads every image to the export size's lengths."""
    module, path = bit(), tmp_path / "bit.onnx"
    plain = plain_export(module)
    assert matches(plain, module, (1, 3, 64, 64)) and not any(matches(plain, module, s) for s in BIT_SIZES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = graphfix.export(module, (torch.randn(2, 3, 64, 64),), path, input_names=["x"], output_names=["y"],
                                 dynamic_axes=AXES)
    assert report.ok and report.status == "repaired", report.summary()
    assert any("ceil(h / 32)" in line for line in report.refitted), report.refitted
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert all(matches(session, module, shape) for shape in BIT_SIZES)


BIT_SIZES = [(1, 3, 33, 33), (2, 3, 40, 57), (1, 3, 71, 71), (3, 3, 128, 100), (1, 3, 200, 31)]

def test_a_pad_the_model_always_makes_is_left_as_it_is(tmp_path):
    """The VAE's (0, 1) stays at every trace: nothing moves, nothing is rebuilt, and the file runs as PyTorch."""
    torch.manual_seed(0)
    module, path = Downsample().eval(), tmp_path / "vae_down.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = graphfix.export(module, (torch.randn(2, 3, 64, 64),), path, input_names=["x"], output_names=["y"],
                                 dynamic_axes=AXES)
    assert report.ok and not report.refitted, report.summary()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert all(matches(session, module, shape) for shape in ODD)
