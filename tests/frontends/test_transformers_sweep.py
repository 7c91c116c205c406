"""transformers models a sweep of real front ends found misjudged (helper 28), from the library's own classes with
small configs and random weights, exported with TorchScript and dynamic axes:

- WavLM with 32 relative-position buckets (healthy at every length): its bucket table has 32 rows, indexed by
  buckets of Range positions (Abs, Log, Min, Where). graphfix took those rows for a cap on the length, probed at
  most 32 samples, below the conv front end's minimum (PyTorch fails there too), and `repair` exited 1. A table
  caps the length only where positions index it as they are, moved or offset (`size_limit`).
- Wav2Vec2 with its samples axis named `N` (helper 82; healthy): `N` was taken for a batch wherever it stood, as in
  PyTorch's `(L, N, E)`, and probed at 1 sample, where the kernel-10 Conv has no input: a GF000 error, `repair`
  exited 1. `N` is a batch only where no dim of the same input is named like one (`batch_named`).
- Swin (window padding baked at 64 x 64): `repair` refused it, but `diagnose` and `check` said "no findings": the
  failure at a size below the grown export size was taken for the model's minimum. Only a kernel's failure is.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import run
from fixtures.library_models import PixelOutput, import_transformers

import graphfix

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]


class Last(torch.nn.Module):
    """The model's last hidden state, from one input."""

    def __init__(self, model, keyword):
        super().__init__()
        self.model, self.keyword = model, keyword

    def forward(self, x):
        return self.model(**{self.keyword: x}).last_hidden_state


def export(module, example, path, axes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes=axes)
    return path


def repair(path, out, *flags):
    return subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(out), *flags],
                          capture_output=True, text=True, timeout=300)


def matches(path, module, sizes) -> None:
    """onnxruntime's outputs of `path` are the module's at each (batch, samples)."""
    for batch, length in sizes:
        x = np.random.default_rng(length).standard_normal((batch, length)).astype(np.float32)
        got, = run(str(path), {"x": x})
        with torch.no_grad():
            np.testing.assert_allclose(got, module(torch.from_numpy(x)).numpy(), rtol=1e-3, atol=1e-4)


def test_wavlm_with_few_buckets_is_healthy_and_written(tmp_path):
    from fixtures.library_models import import_transformers

    tf = import_transformers()
    torch.manual_seed(0)
    config = tf.WavLMConfig(conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), hidden_size=32,
                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=20,
                            num_buckets=32, max_bucket_distance=80, feat_extract_norm="group")
    module = Last(tf.WavLMModel(config), "input_values").eval()
    path = export(module, torch.randn(2, 8000), tmp_path / "wavlm.onnx", {"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "N"}})
    out = tmp_path / "out.onnx"
    done = repair(path, out)
    assert done.returncode == 0, done.stdout + done.stderr
    matches(out, module, ((1, 4000), (2, 8000), (2, 12345)))


def test_swin_with_its_window_padding_baked_is_reported_by_diagnose(tmp_path):
    from fixtures.library_models import import_transformers

    tf = import_transformers()
    torch.manual_seed(0)
    config = tf.SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
                           mlp_ratio=2.0)
    module = Last(tf.SwinModel(config), "pixel_values").eval()
    path = export(module, torch.randn(2, 3, 64, 64), tmp_path / "swin.onnx",
                  {"x": {0: "B", 2: "H", 3: "W"}, "y": {0: "B", 1: "N"}})
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 48)).astype(np.float32)
    with pytest.raises(Exception, match="Reshape"):  # the trap: broken at a size PyTorch runs
        run(str(path), {"x": x})
    assert module(torch.from_numpy(x)).shape[0] == 1
    found = [f for f in graphfix.diagnose(path) if f.severity.value == "error"]
    assert found and all(f.rule == "GF004" and "Reshape" in f.message for f in found), found
    done = repair(path, tmp_path / "out.onnx")
    assert done.returncode == 1, done.stdout + done.stderr


def test_wav2vec2_whose_samples_are_named_n_beside_a_batch_is_healthy_and_written(tmp_path):
    from fixtures.library_models import import_transformers

    tf = import_transformers()
    torch.manual_seed(0)
    config = tf.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                               num_conv_pos_embedding_groups=4, feat_extract_norm="group")
    module = Last(tf.Wav2Vec2Model(config), "input_values").eval()
    path = export(module, torch.randn(2, 640), tmp_path / "w2v.onnx",
                  {"x": {0: "batch", 1: "N"}, "y": {0: "batch", 1: "frames"}})
    assert not [f for f in graphfix.diagnose(path) if f.severity.value == "error"]
    out = tmp_path / "out.onnx"
    done = repair(path, out)
    assert done.returncode == 0, done.stdout + done.stderr
    matches(out, module, ((1, 640), (2, 400), (3, 1001)))


def _token_model(tf, kind: str, rows: int):
    """DeBERTa (v1, relative attention, `max_relative_positions=rows`) or BERT (`max_position_embeddings=rows`),
    small, over token ids, exported at 2 x 16 tokens with dynamic batch and length."""
    common = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    if kind == "deberta":
        model = tf.DebertaModel(tf.DebertaConfig(relative_attention=True, max_relative_positions=rows,
                                                 pos_att_type=["c2p", "p2c"], **common))
    else:
        model = tf.BertModel(tf.BertConfig(max_position_embeddings=rows, **common))
    return Last(model, "input_ids").eval()


def _ids(batch, length):
    return np.random.default_rng(length).integers(0, 100, (batch, length))


def test_deberta_whose_span_cap_tracing_dropped_is_reported_and_refused(tmp_path):
    """DeBERTa with `max_relative_positions=32` slices its 64 relative embeddings at `[32 - s : 32 + s]`,
    `s = min(T, 32)`; tracing at 16 tokens drops the `min`, and past 32 tokens the export fails (GatherElements out
    of range) where PyTorch runs. The span is read from an inner tensor's Shape, so 32 was no threshold and the
    probes stayed at 7 to 15 tokens: `diagnose` said "no findings" and `repair` exited 0."""
    tf = import_transformers()
    module = _token_model(tf, "deberta", 32)
    path = export(module, torch.from_numpy(_ids(2, 16)), tmp_path / "deberta.onnx",
                  {"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}})
    with torch.no_grad():
        assert module(torch.from_numpy(_ids(1, 40))).shape == (1, 40, 32)  # PyTorch runs past 32
    with pytest.raises(Exception, match="GatherElements"):
        run(str(path), {"x": _ids(1, 40)})
    found = [f for f in graphfix.diagnose(path) if f.severity.value == "error"]
    assert found and all(f.rule == "GF000" and "GatherElements" in f.message for f in found), found
    assert all("around row 32" in f.hint and "min(T, 32)" in f.hint for f in found), found  # what it may be
    done = repair(path, tmp_path / "out.onnx")
    assert done.returncode == 1, done.stdout + done.stderr


@pytest.mark.parametrize(("kind", "rows"), [("deberta", 512), ("bert", 64)])
def test_a_table_of_positions_is_a_domain_not_a_dropped_cap(kind, rows, tmp_path):
    """Healthy controls: DeBERTa with its checkpoints' 512 relative positions (its 512 absolute positions bound the
    length first), BERT with 64 positions (PyTorch fails past 64 too). Their `position_ids` buffer is a Constant
    node, which `size_limit` did not read: no probe goes past the table, and `repair` writes them."""
    from graphfix.validate.graph_sizes import size_limit

    tf = import_transformers()
    module = _token_model(tf, kind, rows)
    path = export(module, torch.from_numpy(_ids(2, 16)), tmp_path / f"{kind}.onnx",
                  {"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}})
    import onnx

    assert size_limit(onnx.load(str(path))) == (512 if kind == "deberta" else 64)
    assert not [f for f in graphfix.diagnose(path) if f.severity.value == "error"]
    out = tmp_path / "out.onnx"
    done = repair(path, out)
    assert done.returncode == 0, done.stdout + done.stderr
    for batch, length in ((1, 7), (2, 16), (3, rows - 1)):
        got, = run(str(out), {"x": _ids(batch, length)})
        with torch.no_grad():
            np.testing.assert_allclose(got, module(torch.from_numpy(_ids(batch, length))).numpy(), rtol=1e-3,
                                       atol=1e-4)


def test_efficientnet_probed_below_its_kernels_is_healthy_in_diagnose_as_in_repair(tmp_path):
    """transformers' EfficientNet (helper 95): at 19 x 21 pixels a depthwise Conv has no input left (PyTorch fails
    there too: that size is below the model's minimum) and the squeeze-excite pools after it fail on the values the
    probe fabricated past the Conv. Repair skipped the size, but diagnose reported those three knock-on failures
    as errors. A failure fed only by failures below the minimum is below it too."""
    tf = import_transformers()
    torch.manual_seed(0)
    config = tf.EfficientNetConfig(width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320)
    model = tf.EfficientNetModel(config)
    for module in model.modules():  # the library's init leaves outputs near 1e-25: nothing to compare
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                torch.nn.init.normal_(module.bias, std=0.1)
        elif isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    module = Last(model, "pixel_values").eval()
    path = export(module, torch.randn(1, 3, 128, 128), tmp_path / "effnet.onnx",
                  {"x": {0: "B", 2: "H", 3: "W"}, "y": {0: "B", 2: "h", 3: "w"}})
    with torch.no_grad(), pytest.raises(RuntimeError, match="Kernel size can't be greater"):
        module(torch.randn(1, 3, 19, 21))
    diagnosed = subprocess.run([sys.executable, "-m", "graphfix", "diagnose", str(path)], capture_output=True,
                               text=True, timeout=300)
    assert diagnosed.returncode == 0 and "error" not in diagnosed.stdout, diagnosed.stdout + diagnosed.stderr
    out = tmp_path / "out.onnx"
    done = repair(path, out)
    assert done.returncode == 0, done.stdout + done.stderr
    for batch, height, width in [(1, 96, 100), (2, 128, 128), (3, 160, 192)]:
        x = np.random.default_rng(height).standard_normal((batch, 3, height, width)).astype(np.float32)
        got, = run(str(out), {"x": x})
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


def conformer(**config) -> torch.nn.Module:
    """transformers' Wav2Vec2Conformer in small (2 layers of 32), its last hidden state from raw audio."""
    tf = import_transformers()
    torch.manual_seed(0)
    config = tf.Wav2Vec2ConformerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, conv_dim=(16, 16, 16), conv_stride=(5, 2, 2),
                                        conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
                                        num_conv_pos_embedding_groups=2, conv_depthwise_kernel_size=7, **config)
    return Last(tf.Wav2Vec2ConformerModel(config), "input_values").eval()


def test_a_rotary_cache_run_before_the_export_is_noted_and_regrown_on_request(tmp_path):
    """transformers' Wav2Vec2Conformer keeps its rotary cos/sin cache, `[frames, 1, 1, head_dim]`, in a Python
    attribute: run once before the export (a sanity check), the trace returns the cached tensor and the export folds
    it whole, 119 rows, cut to the frames; longer inputs fail in onnxruntime where PyTorch computes a longer cache
    (helper 94: "no findings", `repair` exit 0). GF006 notes the cap (a formula table's rows do not say whether
    they are the model's own maximum) and `--unsafe-fixes` computes the rows, matching PyTorch past the export."""
    module, example = conformer(position_embeddings_type="rotary"), torch.randn(2, 2400)
    with torch.no_grad():
        module(example)  # the user's check before exporting: it fills the cache at 119 frames
    path = export(module, example, tmp_path / "conformer.onnx", {"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "N"}})
    longer = np.random.default_rng(0).standard_normal((1, 3000)).astype(np.float32)
    with pytest.raises(Exception, match="broadcast"):
        run(str(path), {"x": longer})  # the export fails past its 119 frames
    notes = [f for f in graphfix.diagnose(str(path)) if f.rule == "GF006"]
    assert len(notes) == 4 and all(f.severity.value == "info" and "(119 rows)" in f.message for f in notes), notes
    result = graphfix.repair(str(path), unsafe_fixes=True)
    assert result.status == "repaired" and {a.rule for a in result.applied} == {"GF006"}, result
    out = tmp_path / "out.onnx"
    out.write_bytes(result.model.SerializeToString())
    matches(out, module, ((1, 2400), (1, 3000), (2, 4800)))


def test_moonshine_s_mask_is_probed_with_its_audio_s_sizes(tmp_path):
    """transformers' Moonshine encoder, exported with dynamo: its mask's length is cut at frames `int()` computed
    (9 at 4000 samples), and onnxruntime fails at every other length with a real mask. The dynamo export names the
    int64 mask's dims apart from the float audio's, and the probe fed 2000 samples with masks of 6 to 10, where the
    cut mask is one frame and broadcasts: "only an info", `repair` exit 0 (helper 98). A mask takes the sizes of an
    input of its rank whatever its element type."""
    tf = import_transformers()
    torch.manual_seed(0)
    config = tf.MoonshineConfig(vocab_size=50, hidden_size=32, intermediate_size=64, encoder_num_hidden_layers=2,
                                decoder_num_hidden_layers=1, encoder_num_attention_heads=4,
                                decoder_num_attention_heads=4, max_position_embeddings=512)
    encoder = tf.MoonshineModel(config).eval().encoder

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, x, mask):
            return self.encoder(x, attention_mask=mask).last_hidden_state

    module, path = Encoder().eval(), tmp_path / "moonshine.onnx"
    audio, mask = torch.randn(2, 4000), torch.ones(2, 4000, dtype=torch.int64)
    mask[1, 3600:] = 0
    auto = torch.export.Dim.AUTO
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (audio, mask), str(path), dynamo=True, opset_version=18, input_names=["x", "mask"],
                          output_names=["y"], dynamic_shapes=({0: auto, 1: auto}, {0: auto, 1: auto}))
    with pytest.raises(Exception, match="broadcast"):
        run(str(path), {"x": np.zeros((1, 6400), np.float32), "mask": np.ones((1, 6400), np.int64)})
    done = subprocess.run([sys.executable, "-m", "graphfix", "diagnose", str(path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1 and "error" in done.stdout, done.stdout + done.stderr
    assert repair(path, tmp_path / "out.onnx").returncode == 1


def test_wav2vec2_conformer_s_relative_positions_grown_before_the_export_are_probed_past_them(tmp_path):
    """Wav2Vec2ConformerRelPositionalEmbedding is ESPnet's (tests/frontends/test_windows_and_pads.py): with 16
    `max_source_positions`, a run at 2400 samples grows its table to 119 frames a side, and past 2400 samples the
    export fails where PyTorch grows it again. Given the export size, the probe goes past (helper 98's class)."""
    module, example = conformer(position_embeddings_type="relative", max_source_positions=16), torch.randn(2, 2400)
    with torch.no_grad():
        module(example)
    path = export(module, example, tmp_path / "conformer.onnx", {"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "N"}})
    matches(path, module, ((2, 2400), (1, 1600)))
    with pytest.raises(Exception, match="broadcast"):
        run(str(path), {"x": np.zeros((1, 3000), np.float32)})
    done = subprocess.run([sys.executable, "-m", "graphfix", "diagnose", str(path), "--trace-shape", "x=2x2400"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "past 119" in done.stdout, done.stdout + done.stderr


def test_glpn_whose_depth_the_exporter_declares_after_the_batch_is_written_once_the_export_size_is_given(tmp_path):
    """Helper 103: GLPN's depth map, exported at batch 2 with only its batch declared dynamic, is declared
    `[batch, batch, W]` by the TorchScript exporter (its height named after the batch). Nothing but the export size
    shows that declaration wrong (it was all that refused MobileNetV2's baked TF padding, below): refused, with the
    way out in `diagnose`'s hint, and repaired with exit 0 once `--trace-shape` gives it, matching PyTorch."""
    tf = import_transformers()
    torch.manual_seed(0)
    config = tf.GLPNConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 2, 4],
                           decoder_hidden_size=16)
    module = PixelOutput(tf.GLPNForDepthEstimation(config), "predicted_depth").eval()
    path = export(module, torch.randn(2, 3, 64, 96), tmp_path / "glpn.onnx",
                  {"x": {0: "batch", 2: "height", 3: "width"}, "y": {0: "batch"}})
    assert declared_dims(path)[:2] == ["batch", "batch"]  # the exporter's naming this test is about
    refused = repair(path, tmp_path / "refused.onnx")
    assert refused.returncode == 1 and "declares batch" in refused.stdout, refused.stdout + refused.stderr
    done = repair(path, tmp_path / "fixed.onnx", "--trace-shape", "x=2x3x64x96")
    assert done.returncode == 0, done.stdout + done.stderr
    for shape in ((1, 3, 96, 64), (3, 3, 128, 160)):
        x = np.random.default_rng(shape[2]).standard_normal(shape).astype(np.float32)
        got, = run(str(tmp_path / "fixed.onnx"), {"x": x})
        with torch.no_grad():
            np.testing.assert_allclose(got, module(torch.from_numpy(x)).numpy(), rtol=1e-3, atol=1e-4)


ODD_MISS = pytest.mark.xfail(strict=True, reason=(
    "known miss: exported at an odd size, 'SAME' pads (1, 1) before each stride-2 Conv, which is a plain padding=1's "
    "too (speechbrain pads (1, 1) at every size for stride 2, beside kernel-1 Convs padded by zeros)"))


@pytest.mark.parametrize("declared, size, other", [
    ({0: "batch"}, (64, 96), (97, 65)),
    ({0: "batch", 2: "out_h", 3: "out_w"}, (64, 96), (97, 65)),
    pytest.param({0: "batch", 2: "out_h", 3: "out_w"}, (65, 97), (96, 64), marks=ODD_MISS),
], ids=["batch", "own", "own-odd"])
def test_mobilenet_v2_s_tf_padding_baked_by_the_trace_is_not_written(tmp_path, declared, size, other):
    """transformers' MobileNetV2 pads as TensorFlow does, from `features.shape` through Python `if`s and `max`: the
    trace bakes the pads of 64 x 96 (3 x 2 frames where PyTorch gives 4 x 3 at 97 x 65). Its stride-2 Convs' (0, 1)
    pads are a fixed pad's graph (Stable Diffusion's VAE); its 1 x 1 Convs padded by zeros are not a graph a model
    that writes its pads leaves: GF008's error (tests/rules/test_gf008_same_padding.py). Before it, only the
    exporter's `[batch, 1280, batch, W]` (2 rows where the batch was 2) refused it, and with the map's axes named
    apart it was written with exit 0."""
    tf = import_transformers()
    torch.manual_seed(0)
    module = PixelOutput(tf.MobileNetV2Model(tf.MobileNetV2Config(depth_multiplier=0.35)), "last_hidden_state").eval()
    path = export(module, torch.randn(2, 3, *size), tmp_path / "mnv2.onnx",
                  {"x": {0: "batch", 2: "height", 3: "width"}, "y": declared})
    x = torch.randn(1, 3, *other)
    with torch.no_grad():  # broken, as this test says (values near 1e-25 from the library's init: no atol)
        got, want = run(str(path), {"x": x.numpy()})[0], module(x).numpy()
        assert got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=0)
    done = repair(path, tmp_path / "out.onnx")
    assert done.returncode == 1 and "error GF008" in done.stdout and "'SAME' at even lengths" in done.stdout \
        and "by zeros" in done.stdout and not (tmp_path / "out.onnx").exists(), done.stdout + done.stderr


def declared_dims(path):
    import onnx

    return [d.dim_param or d.dim_value for d in onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim]


@pytest.mark.parametrize("declared", [{0: "batch"}, {0: "batch", 1: "out_h", 2: "out_w"}], ids=["batch", "own"])
def test_depth_anything_s_head_resized_to_the_traced_patch_grid_is_not_written(tmp_path, declared):
    """Helper 105: DepthAnything's head interpolates to `(int(patch_height * 14), int(patch_width * 14))`, then two
    'same' convolutions: 56 x 84 at every size, where PyTorch's map follows the image. With the depth map's axes
    declared under names of their own it was written with exit 0 (GF010's walk stopped at the Conv after the
    Resize, and the Resize's sizes were read only where the analysis knew every entry); declared by the batch
    alone, the exporter's `[batch, batch, W]` refuses it."""
    tf = import_transformers()
    torch.manual_seed(0)
    backbone = tf.Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                               image_size=28, patch_size=14, out_features=["stage1", "stage2"],
                               reshape_hidden_states=False)
    config = tf.DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 16],
                                    reassemble_factors=[2, 1], fusion_hidden_size=8, head_hidden_size=8,
                                    patch_size=14)
    module = PixelOutput(tf.DepthAnythingForDepthEstimation(config), "predicted_depth").eval()
    path = export(module, torch.randn(2, 3, 56, 84), tmp_path / "depth.onnx",
                  {"x": {0: "batch", 2: "height", 3: "width"}, "y": declared})
    x = torch.randn(1, 3, 70, 42)
    with torch.no_grad():
        assert run(str(path), {"x": x.numpy()})[0].shape != tuple(module(x).shape)  # broken, as this test says
    done = repair(path, tmp_path / "out.onnx")
    assert done.returncode == 1, done.stdout + done.stderr

