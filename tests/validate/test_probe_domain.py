"""Healthy models with strided front ends are probed inside their domain (#22 item 1): `repair` exits 0 and
`diagnose` reports no error. Before, graphfix probed 7-15 audio samples into a kernel-16 Conv1d and 25 px images
into a stride-32 CNN, and called the failure PyTorch would have too a broken model.

Real code, random weights, exported the way users do: torch.nn (both exporters), transformers wav2vec2 and HuBERT
(TorchScript, the small config the GF003 tests use), torchvision MobileNetV3 with dynamic H and W.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from graphfix.cli import cli
from graphfix.validate import ValidationOptions, probe_sizes

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]


def _export(module, example, path, names, axes, dynamo=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=dynamo, opset_version=18 if dynamo else 17,
                          input_names=names[:-1], output_names=names[-1:], dynamic_axes=axes)
    return path


def conv_front_end(path, dynamo, samples="S"):
    """A kernel-16 stride-8 Conv1d and a stride-2 Conv1d over raw audio, then attention-like pooling over the frames:
    88 samples give 4 frames. `samples`: the name of the audio's length axis."""
    from torch import nn

    class FrontEnd(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.Sequential(nn.Conv1d(1, 8, 16, stride=8), nn.GELU(), nn.Conv1d(8, 16, 4, stride=2))
            self.proj = nn.Linear(16, 16)

        def forward(self, audio):
            h = self.proj(self.convs(audio.unsqueeze(1)).transpose(1, 2))
            return h * h.softmax(1)

    torch.manual_seed(0)
    return _export(FrontEnd(), (torch.randn(2, 400),), path, ["audio", "h"],
                   {"audio": {0: "B", 1: samples}, "h": {0: "B", 1: "F"}}, dynamo)


def speech_encoder(path, name):
    from fixtures.torch_models import CONV, HIDDEN, transformers_hiding_torchvision

    common = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    config = dict(num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, do_stable_layer_norm=False,
                  feat_extract_norm="group", **CONV, **common)
    with transformers_hiding_torchvision() as tf:
        torch.manual_seed(0)
        model = (tf.HubertModel(tf.HubertConfig(**config)) if name == "hubert"
                 else tf.Wav2Vec2Model(tf.Wav2Vec2Config(**config)))

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, audio):
            return self.model(input_values=audio, return_dict=True).last_hidden_state

    return _export(Encoder(), (torch.randn(2, 640),), path, ["audio", "h"],
                   {"audio": {0: "batch", 1: "samples"}, "h": {0: "batch", 1: "frames"}})


def mobilenet(path):
    from fixtures.torchvision_models import register_ops

    register_ops()
    import torchvision

    torch.manual_seed(0)
    return _export(torchvision.models.mobilenet_v3_small(num_classes=10), (torch.randn(1, 3, 96, 96),), path,
                   ["image", "logits"], {"image": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N"}})


MODELS = {
    "conv-front-end-ts": lambda p: conv_front_end(p, False),
    "conv-front-end-dynamo": lambda p: conv_front_end(p, True),
    # a length named like a count (`n`, `num_samples`) was probed at 1 as a batch (sweep, helper 34)
    "conv-front-end-n": lambda p: conv_front_end(p, False, "n"),
    "conv-front-end-num-samples": lambda p: conv_front_end(p, False, "num_samples"),
    "wav2vec2": lambda p: speech_encoder(p, "wav2vec2"),
    "hubert": lambda p: speech_encoder(p, "hubert"),
    "mobilenet-v3": mobilenet,
}
LEAST = {"conv-front-end-ts": {"S": 88}, "conv-front-end-dynamo": {"S": 88}, "conv-front-end-n": {"n": 88},
         "conv-front-end-num-samples": {"num_samples": 88}, "mobilenet-v3": {"H": 97, "W": 97}}


@pytest.mark.parametrize("name", MODELS)
def test_healthy_front_end_is_probed_inside_its_domain(name, tmp_path):
    path = MODELS[name](tmp_path / f"{name}.onnx")
    import onnx

    sizes = probe_sizes(onnx.load(str(path)), ValidationOptions())
    for dim, least in LEAST.get(name, {}).items():
        assert all(binding[dim] >= least for binding in sizes), sizes
    runner = CliRunner()
    diagnosed = runner.invoke(cli, ["diagnose", str(path), "--format", "json"])
    assert diagnosed.exit_code == 0, diagnosed.output
    repaired = runner.invoke(cli, ["repair", str(path), "-o", str(tmp_path / "out.onnx")])
    assert repaired.exit_code == 0, repaired.output
    assert "unchanged" in repaired.output and "fails" not in repaired.output
    assert (tmp_path / "out.onnx").read_bytes() == path.read_bytes()  # healthy: written as it came


def test_guessed_export_sizes_differ_from_each_other_and_from_fixed_sizes():
    """Two lengths nobody gave are guessed apart (time=12, tokens=12 hid transposed-dim bugs), and apart from the
    graph's fixed sizes (a length equal to the hidden size lets a wrong broadcast run)."""
    from conftest import parse

    weights = ", ".join(["0.5"] * 12 * 13)
    model = parse(f"""< ir_version: 8, opset_import: ["" : 17] >
        g (float[B, T, 12] x, float[B, U, 12] y) => (float[B, T, U] z) <float[12, 13] w = {{{weights}}}> {{
            h = MatMul(x, w)
            yt = Transpose<perm=[0, 2, 1]>(y)
            z = MatMul(x, yt)
        }}""")
    export = probe_sizes(model, ValidationOptions())[0]
    assert export["T"] != export["U"] and not {export["T"], export["U"]} & {12, 13}, export


def test_a_kernel_that_fails_at_batch_1_at_every_length_is_no_minimum_length(tmp_path):
    """speechbrain's SepFormer decoder calls `squeeze()` without a dim: at batch 1 the batch axis goes too, and the
    Pad after it (pads for three axes) fails at every length. Probed at batch 1 and a shorter length, that failure
    was taken for the model's minimum length and `diagnose` said "no findings" while `repair` refused it (sweep,
    helper 34). A kernel's failure below the export size is a minimum only where that batch runs at the export's
    lengths."""
    from torch import nn
    from torch.nn import functional

    class SqueezedPad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 4, 8, stride=4)

        def forward(self, audio):
            return functional.pad(self.conv(audio.unsqueeze(1)).squeeze(), (2, 2))

    torch.manual_seed(0)
    path = _export(SqueezedPad(), (torch.randn(2, 400),), tmp_path / "squeezed.onnx", ["audio", "h"],
                   {"audio": {0: "B", 1: "S"}, "h": {0: "B", 2: "F"}})
    # the export size given: the batch-1 size is then shorter than it (201 samples), as in SepFormer's probe
    diagnosed = CliRunner().invoke(cli, ["diagnose", str(path), "--trace-shape", "audio=2x400"])
    assert diagnosed.exit_code == 1 and "Pad" in diagnosed.output and "'B': 1" in diagnosed.output, \
        diagnosed.output


def test_a_reflecting_pad_longer_than_a_short_probe_is_the_models_minimum_for_repair_as_for_diagnose(tmp_path):
    """A reflecting pad of 30 needs more than 30 samples, in PyTorch as in onnxruntime. At the batch-1 size (21 of
    the export's 40) it fails: `diagnose` took that for the model's minimum, but `repair`'s proof of the unchanged
    model counted it and exited 1 on a healthy model (EnCodec, sweep, helper 34). Both take it as the minimum now;
    the batch-1 Pad of the test above still fails both."""
    from torch import nn
    from torch.nn import functional

    class Reflect(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 4, 3)

        def forward(self, audio):
            return self.conv(functional.pad(audio.unsqueeze(1), (30, 30), mode="reflect"))

    torch.manual_seed(0)
    path = _export(Reflect(), (torch.randn(2, 40),), tmp_path / "reflect.onnx", ["audio", "h"],
                   {"audio": {0: "B", 1: "S"}, "h": {0: "B", 2: "F"}})
    with pytest.raises(RuntimeError, match=r"(?i)padding size"):
        Reflect()(torch.randn(1, 21))  # PyTorch has the same minimum
    runner = CliRunner()
    for command in (["diagnose", str(path)], ["repair", str(path), "-o", str(tmp_path / "out.onnx")]):
        done = runner.invoke(cli, [*command, "--trace-shape", "audio=2x40"])
        assert done.exit_code == 0 and "FAILS" not in done.output and "error" not in done.output, done.output


@pytest.mark.parametrize("dynamo", [False, True], ids=["ts", "dynamo"])
def test_a_table_sliced_from_a_constant_minus_the_length_bounds_the_length(dynamo, tmp_path):
    """`x + self.pe[16 - T : 16]`: the last T rows of a context of 16. Past 16 the start goes negative and wraps, and
    PyTorch fails too: the model's domain is T <= 16. The probe went to T = 19 past the 16 that T is subtracted
    from, and `repair` exited 1 on a healthy export with a GF000 error from `diagnose` (red team 35)."""
    import onnx
    from torch import nn

    from graphfix.validate.graph_sizes import size_limit

    class RightAligned(nn.Module):
        def __init__(self):
            super().__init__()
            self.pe = nn.Parameter(torch.randn(32, 8))

        def forward(self, x):
            return x + self.pe[16 - x.shape[1]:16] + self.pe.mean(0)

    torch.manual_seed(0)
    module, path = RightAligned().eval(), tmp_path / "right.onnx"
    with pytest.raises(RuntimeError):
        module(torch.randn(1, 19, 8))  # outside the model in PyTorch too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, (torch.randn(2, 16, 8),), str(path), dynamo=True, input_names=["x"],
                              output_names=["y"], dynamic_shapes=({0: torch.export.Dim("B"),
                                                                   1: torch.export.Dim("T", min=1, max=16)},))
        else:
            _export(module, (torch.randn(2, 16, 8),), path, ["x", "y"], {"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}})
    model = onnx.load(str(path))
    assert size_limit(model) == 16
    assert all(binding["T"] <= 16 for binding in probe_sizes(model, ValidationOptions(num_sizes=8)))
    runner = CliRunner()
    diagnosed = runner.invoke(cli, ["diagnose", str(path)])
    assert diagnosed.exit_code == 0 and "GF000" not in diagnosed.output, diagnosed.output
    repaired = runner.invoke(cli, ["repair", str(path), "-o", str(tmp_path / "out.onnx")])
    assert repaired.exit_code == 0 and "unchanged" in repaired.output and "fails" not in repaired.output, \
        repaired.output
    assert (tmp_path / "out.onnx").read_bytes() == path.read_bytes()


def test_a_centred_window_whose_span_python_capped_is_probed_past_its_centre(tmp_path):
    """`rel[16 - s : 16 + s]` with s = min(T, 16), traced at T = 8: the graph slices with s = T, and past 16 the
    start wraps (PyTorch runs, onnxruntime fails). The start `16 - T` made 16 a limit of the domain, as for
    `pe[16 - T : 16]` above, so no probe went past it: `diagnose` said nothing and `repair` exited 0. A window
    centred on its row (its end `16 + T`) is no limit: 16 is a threshold the probe crosses."""
    import onnx
    from conftest import run
    from torch import nn

    from graphfix.validate.graph_sizes import size_limit

    class CentredWindow(nn.Module):
        """DeBERTa's relative attention in small: 2 s rows of a 32-row table around row 16, s = min(T, 16)
        (Python's `min`, which tracing drops), indexed by the relative positions clamped into the window."""

        def __init__(self):
            super().__init__()
            self.rel = torch.nn.Parameter(torch.randn(32, 8))

        def forward(self, x):
            length = x.shape[1]
            span = min(length, 16)
            window = self.rel[16 - span:16 + span]
            positions = torch.arange(length)
            index = torch.clamp(positions[:, None] - positions[None, :] + span, 0, 2 * span - 1)
            return x + window[index].mean(1)

    torch.manual_seed(0)
    module, path = CentredWindow().eval(), tmp_path / "window.onnx"
    _export(module, (torch.randn(2, 8, 8),), path, ["x", "y"], {"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}})
    x = np.random.default_rng(0).standard_normal((1, 20, 8)).astype(np.float32)
    assert module(torch.from_numpy(x)).shape == (1, 20, 8)  # PyTorch runs past 16
    with pytest.raises(Exception, match="Gather"):
        run(str(path), {"x": x})  # the export does not
    model = onnx.load(str(path))
    assert size_limit(model) != 16
    past = [binding["T"] for binding in probe_sizes(model, ValidationOptions()) if binding["T"] > 16]
    assert past and all(size <= 32 for size in past), past
    runner = CliRunner()
    diagnosed = runner.invoke(cli, ["diagnose", str(path)])
    assert diagnosed.exit_code == 1 and "GF000" in diagnosed.output, diagnosed.output
    repaired = runner.invoke(cli, ["repair", str(path), "-o", str(tmp_path / "out.onnx")])
    assert repaired.exit_code != 0, repaired.output


class LastFrameOfTwo(torch.nn.Module):
    """A kernel-64 Conv1d over two inputs joined (`cat([a, b])`), then its last frame read at an index `int()`
    baked: the Conv needs Ta + Tb >= 64, and the index fails at every length shorter than the export's."""

    def __init__(self, baked: bool = True):
        super().__init__()
        self.conv, self.proj, self.baked = torch.nn.Conv1d(1, 8, 64, stride=4), torch.nn.Linear(8, 4), baked

    def forward(self, a, b):
        h = self.conv(torch.cat([a, b], -1))
        last = int(h.shape[-1]) - 1 if self.baked else h.shape[-1] - 1
        return self.proj(h[..., last])


def _two_inputs(path, baked: bool = True):
    torch.manual_seed(0)
    return _export(LastFrameOfTwo(baked), (torch.randn(2, 1, 40), torch.randn(2, 1, 44)), path, ["a", "b", "y"],
                   {"a": {0: "B", 2: "Ta"}, "b": {0: "B", 2: "Tb"}, "y": {0: "B"}})


def test_a_conv_over_two_inputs_together_is_probed_below_the_export_size_inside_its_domain(tmp_path):
    """Each input's minimum alone bounds nothing where a Conv reads both together: the smaller probe halved both
    (21 + 23 samples for a kernel of 64), the Conv failed there as in PyTorch, and the size was skipped as the
    model's minimum. The baked index, wrong at every length shorter than the export's, went unprobed: `repair`
    wrote the model with exit 0 (helper 97), and `diagnose` crashed fabricating a Conv output of negative length.
    Both inputs now move up together until the Conv has its frames, still below the export size."""
    import onnx

    path = _two_inputs(tmp_path / "baked.onnx")
    trace = ["--trace-shape", "a=2x1x40", "--trace-shape", "b=2x1x44"]
    sizes = probe_sizes(onnx.load(str(path)), ValidationOptions(trace_sizes={"B": 2, "Ta": 40, "Tb": 44}))
    smaller = [binding for binding in sizes if binding["Ta"] < 40 and binding["Tb"] < 44]
    assert smaller and all(b["Ta"] + b["Tb"] >= 64 + 3 * 4 for b in smaller), sizes  # four frames at least
    runner = CliRunner()
    diagnosed = runner.invoke(cli, ["diagnose", str(path), *trace])
    assert diagnosed.exit_code == 1 and "Gather" in diagnosed.output, diagnosed.output
    repaired = runner.invoke(cli, ["repair", str(path), "-o", str(tmp_path / "out.onnx"), *trace])
    assert repaired.exit_code == 1 and "FAILS" in repaired.output, repaired.output  # the input, as it came
    healthy = _two_inputs(tmp_path / "healthy.onnx", baked=False)  # the index read from the shape: no error
    for command in (["diagnose", str(healthy)], ["repair", str(healthy), "-o", str(tmp_path / "ok.onnx")]):
        done = runner.invoke(cli, [*command, *trace])
        assert done.exit_code == 0 and "FAILS" not in done.output, done.output


def test_sizes_given_below_a_conv_window_are_reported_not_a_crash(tmp_path):
    """Given 20 + 22 samples, the kernel-64 Conv has no input: onnxruntime fails there (PyTorch too), and the probe
    fed what follows it a Conv output of shape [2, 8, -5]: `diagnose` crashed with "internal error: negative
    dimensions are not allowed". A shape with a negative dim is no shape: what depends on it is dropped."""
    path = _two_inputs(tmp_path / "baked.onnx", baked=False)
    done = CliRunner().invoke(cli, ["diagnose", str(path), "--shape", "a=2x1x20", "--shape", "b=2x1x22"])
    assert done.exit_code == 1 and "Conv" in done.output and "internal error" not in done.output, done.output


class FixedPosition(torch.nn.Module):
    """`h[:, 10] + h.mean(1)`: a model's own position 10, healthy at every length from 11 (helper 129: probed at 7
    frames, it got an error GF009 and `repair` exited 1). Or, with `baked`, `h[:, int(T) - 1]` traced at 11 frames:
    the same graph, which --trace-shape tells apart: the last position there is no bound, the probe goes shorter,
    and the failure there is the finding's (a warning without it: the position may be the model's)."""

    def __init__(self, baked: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.baked = torch.nn.Linear(16, 16), baked

    def forward(self, x):
        h = self.lin(x)
        return h[:, int(x.shape[1]) - 1 if self.baked else 10] + h.mean(1)


def test_a_fixed_index_bounds_the_length_from_below(tmp_path):
    module = FixedPosition()
    path = _export(module, (torch.randn(2, 16, 16),), tmp_path / "m.onnx", ["x", "y"], {"x": {0: "B", 1: "T"}})
    found = CliRunner().invoke(cli, ["diagnose", str(path)])  # nothing says the export length: `int(T) - 1` at 11?
    assert found.exit_code == 0 and "warning GF009" in found.output and "error" not in found.output, found.output
    told = CliRunner().invoke(cli, ["diagnose", str(path), "--trace-shape", "x=2x16x16"])
    assert told.exit_code == 0 and "no findings" in told.output, told.output
    out = tmp_path / "fixed.onnx"
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])
    assert done.exit_code == 0 and "T=7" not in done.output, done.output
    assert min(s["T"] for s in probe_sizes(__import__("onnx").load(str(path)), ValidationOptions())) == 11


def test_the_last_position_at_a_given_export_length_is_probed_below_and_an_error(tmp_path):
    path = _export(FixedPosition(baked=True), (torch.randn(2, 11, 16),), tmp_path / "m.onnx", ["x", "y"],
                   {"x": {0: "B", 1: "T"}})
    found = CliRunner().invoke(cli, ["diagnose", str(path), "--trace-shape", "x=2x11x16"])
    assert found.exit_code == 1 and "error GF009" in found.output and "int(T) - 1" in found.output, found.output
    assert "Confirmed by onnxruntime" in found.output, found.output  # probed shorter: the index is no bound there
    quiet = CliRunner().invoke(cli, ["diagnose", str(path), "--trace-shape", "x=2x16x16"])
    assert "GF009" not in quiet.output, quiet.output
