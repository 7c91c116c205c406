"""transformers' GraniteSpeech projector (#22, "GraniteSpeech's padding"): it pads the encoder's frames to whole
windows with `math.ceil(seq_len / window_size)`, then reshapes them into `[B * nblocks, window, D]` for its
Q-Former. The TorchScript exporter bakes the block count: the Pad takes every length to 45 (3 windows of 15 at
T = 40), longer inputs are cut and shorter ones padded to 9 output tokens, where PyTorch gives 6 at 29 frames and
18 at 90. From the graph several lengths fit (`ceil(T / 15) * 15`, `ceil(T / 45) * 45`, a fixed maximum of 45):
`repair` refuses it with GF008's error. The export companion traces the module at other lengths, fits
`ceil(t / 15)`, and writes a model that matches PyTorch; the dynamo exporter keeps the ceiling symbolic, and that
export is healthy and written as it came. Random weights, a small config, no download."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import run
from fixtures.library_models import import_transformers

import graphfix

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]
AXES = {"h": {0: "b", 1: "t"}, "y": {0: "b", 1: "n"}}
SIZES = [(1, 29), (3, 61), (1, 90)]  # batch 1, fewer frames than the export's 40, more


def projector() -> torch.nn.Module:
    tf = import_transformers()
    from transformers.models.granite_speech.modeling_granite_speech import GraniteSpeechEncoderProjector

    qformer = tf.Blip2QFormerConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, encoder_hidden_size=16, cross_attention_frequency=1)
    encoder = tf.GraniteSpeechEncoderConfig(input_dim=16, num_layers=1, hidden_dim=16, feedforward_mult=2,
                                            num_heads=2, dim_head=8, output_dim=8)
    text = dict(model_type="granite", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, vocab_size=100)
    config = tf.GraniteSpeechConfig(text_config=text, encoder_config=encoder, projector_config=qformer,
                                    window_size=15, downsample_rate=5)
    torch.manual_seed(0)
    return GraniteSpeechEncoderProjector(config).eval()


def matches(module, path) -> bool:
    for batch, length in SIZES:
        x = np.random.default_rng(length).standard_normal((batch, length, 16)).astype(np.float32)
        got, = run(str(path), {"h": x})
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-4):
            return False
    return True


def repair(path, out):
    return subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)


def test_the_baked_window_count_is_refused_and_the_companion_repairs_it(tmp_path):
    module, path, out = projector(), tmp_path / "projector.onnx", tmp_path / "out.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 40, 16),), str(path), dynamo=False, input_names=["h"],
                          output_names=["y"], dynamic_axes=AXES)
    assert not matches(module, path)  # broken, as the docstring says
    refused = repair(path, out)
    assert refused.returncode == 1 and "error GF008" in refused.stdout and not out.exists(), refused.stdout
    written = tmp_path / "exported.onnx"
    report = graphfix.export(module, (torch.randn(2, 40, 16),), written, input_names=["h"], output_names=["y"],
                             dynamic_axes=AXES)
    assert report.ok and report.status == "repaired" and report.refitted, report.summary()
    assert matches(module, written)


def test_the_dynamo_export_keeps_the_ceiling_and_is_written(tmp_path):
    module, path, out = projector(), tmp_path / "projector.onnx", tmp_path / "out.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 40, 16),), str(path), dynamo=True, input_names=["h"],
                          output_names=["y"], dynamic_axes=AXES)
    assert matches(module, path)
    done = repair(path, out)
    assert done.returncode == 0 and out.read_bytes() == path.read_bytes(), done.stdout
