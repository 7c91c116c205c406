"""Healthy models from the libraries' own classes (#22: "a healthy model from any of these libraries gets no error
and `repair` exits 0"), one of each family a sweep of this stop tried (timm's CNN and hybrid families, transformers'
speech and vision encoders; small configs, random weights, TorchScript with dynamic axes): each is written
unchanged with exit 0, and the exported graph is PyTorch's at sizes other than the export's (the premise: a model
graphfix leaves alone must be right there). A family whose graph has a size step (timm's DLA, whose shortcuts meet
at 8 sizes in every 16; HRNet) is refused off the step by design, its hint giving sizes on it (test_raft.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run
from fixtures.library_models import import_timm, import_transformers

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

TIMM = ["ghostnet_050", "mixnet_s", "hgnetv2_b0", "efficientvit_b0", "fastvit_t8", "edgenext_xx_small",
        "mobileone_s0", "tf_efficientnet_lite0"]
IMAGE = {"x": {0: "B", 2: "H", 3: "W"}, "y": {0: "B"}}


class Last(torch.nn.Module):
    """A transformers model's last hidden state from one keyword input."""

    def __init__(self, model, keyword, **extra):
        super().__init__()
        self.model, self.keyword, self.extra = model, keyword, extra

    def forward(self, x):
        return self.model(**{self.keyword: x}, **self.extra).last_hidden_state


def _small(**more):
    return dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **more)


def _audio(**more):
    return _small(conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), num_feat_extract_layers=2,
                  num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, **more)


TRANSFORMERS = {  # a builder of the module, the export's input shape, its dynamic axes and two other shapes
    "speech2text encoder": (lambda tf: Last(tf.Speech2TextModel(tf.Speech2TextConfig(
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, input_feat_per_channel=16, conv_channels=32,
        max_source_positions=600)).get_encoder(), "input_features"),
        (2, 120, 16), {0: "B", 1: "T"}, [(1, 128, 16), (3, 97, 16)]),
    "sew-d": (lambda tf: Last(tf.SEWDModel(tf.SEWDConfig(**_audio(squeeze_factor=2, max_position_embeddings=64,
                                                                  position_buckets=32))), "input_values"),
              (2, 4000), {0: "B", 1: "T"}, [(1, 4008), (3, 5100)]),
    "unispeech": (lambda tf: Last(tf.UniSpeechModel(tf.UniSpeechConfig(**_audio())), "input_values"),
                  (2, 4000), {0: "B", 1: "T"}, [(1, 4008), (3, 5100)]),
    "beit relative bias": (lambda tf: Last(tf.BeitModel(tf.BeitConfig(**_small(
        image_size=32, patch_size=8, use_relative_position_bias=True)), add_pooling_layer=False), "pixel_values",
        interpolate_pos_encoding=True), (2, 3, 32, 32), {0: "B", 2: "H", 3: "W"}, [(1, 3, 40, 48), (3, 3, 64, 32)]),
    "segformer": (lambda tf: Last(tf.SegformerModel(tf.SegformerConfig(
        hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 4],
        decoder_hidden_size=32)), "pixel_values"), (2, 3, 64, 64), {0: "B", 2: "H", 3: "W"},
        [(1, 3, 96, 64), (3, 3, 64, 128)]),
}


def _export(module, shape, axes, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(*shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes=axes)
    return path


def _healthy(tmp_path, module, path, shapes):
    out = tmp_path / "out.onnx"
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])
    assert done.exit_code == 0 and "unchanged" in done.output and "applied" not in done.output, done.output
    for shape in shapes:  # the premise: the export is PyTorch's model at other sizes
        x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            np.testing.assert_allclose(run(str(out), {"x": x})[0], module(torch.from_numpy(x)).numpy(),
                                       rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", TIMM)
def test_a_timm_family_is_written_unchanged(tmp_path, name):
    torch.manual_seed(0)
    module = import_timm().create_model(name, pretrained=False, num_classes=10).eval()
    path = _export(module, (2, 3, 96, 96), IMAGE, tmp_path / "m.onnx")
    _healthy(tmp_path, module, path, [(1, 3, 128, 96), (3, 3, 96, 160)])


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_a_transformers_encoder_is_written_unchanged(tmp_path, name):
    build, shape, axes, shapes = TRANSFORMERS[name]
    torch.manual_seed(0)
    module = build(import_transformers()).eval()
    path = _export(module, shape, {"x": axes, "y": {0: "B"}}, tmp_path / "m.onnx")
    _healthy(tmp_path, module, path, shapes)
