"""Sizes given with `--shape`: the proof also runs the dims they fix moved (graphfix.validate.sizes.shape_moved).

transformers' Longformer exported with TorchScript and dynamic (batch, sequence) axes (red team, helper 87).

Its sliding chunks are `as_strided` views, which the exporter writes as a Gather from the flattened tensor at
indices whose strides are the export size's: at other sizes the Gather either fails (batch 1) or runs and reads
the wrong elements (batch 2, 32 tokens where it was traced at 16: about 9% off PyTorch). Without `--shape` the
probe meets a failure and `repair` exits 1. With `--shape input_ids=2x32` the proof ran that one size only, where
the unchanged model was compared with nothing but itself, and wrote it with exit 0. `--shape` gives sizes the model
takes, not its only size: the proof also runs the batch dims it fixed moved (batch 1), where the Gather fails.
A healthy model given `--shape` is still written, RoBERTa too, whose length limit the graph does not show (helper
90: its positions are a cumulative sum of the mask; with the length moved to twice the size given, it was refused).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from conftest import run

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from graphfix.cli import cli  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]
NAMES = ["input_ids", "attention_mask"]


class Hidden(torch.nn.Module):
    """The last hidden state from token ids and their mask."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, mask):
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state


def export(module, path, batch: int, length: int):
    ids, mask = torch.randint(2, 100, (batch, length)), torch.ones(batch, length, dtype=torch.int64)
    axes = {name: {0: "b", 1: "s"} for name in [*NAMES, "out"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (ids, mask), str(path), dynamo=False, opset_version=17, input_names=NAMES,
                          output_names=["out"], dynamic_axes=axes)
    return path


def feeds(batch: int, length: int) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(length).integers(2, 100, (batch, length)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones((batch, length), np.int64)}


def deviation(path, module, batch: int, length: int) -> float:
    """The largest difference of onnxruntime's output from PyTorch's, relative to PyTorch's largest value."""
    given = feeds(batch, length)
    got, = run(str(path), given)
    with torch.no_grad():
        want = module(*(torch.from_numpy(given[name]) for name in NAMES)).numpy()
    return float(np.abs(got - want).max() / np.abs(want).max())


def graphfix(*args) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, [*args, "--format", "json"])
    return result.exit_code, json.loads(result.output)


def shapes(dims: str) -> list[str]:
    return [arg for name in NAMES for arg in ("--shape", f"{name}={dims}")]


def test_longformer_with_baked_strides_is_not_written_at_a_shape_where_it_runs_wrong(tmp_path):
    from fixtures.library_models import import_transformers

    tf = import_transformers()
    torch.manual_seed(0)
    config = tf.LongformerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 vocab_size=100, attention_window=4, max_position_embeddings=128, pad_token_id=1)
    module = Hidden(tf.LongformerModel(config)).eval()
    path = export(module, tmp_path / "longformer.onnx", 2, 16)
    assert deviation(path, module, 2, 16) < 1e-3  # right at the export size
    assert deviation(path, module, 2, 32) > 0.02  # the trap: runs at 2x32, and runs wrong
    out = tmp_path / "out.onnx"
    code, report = graphfix("repair", str(path), "-o", str(out), *shapes("2x32"))
    assert code == 1 and not report["models"][0]["validation"]["passed"], report
    code, report = graphfix("diagnose", str(path), *shapes("2x32"))
    assert code == 1 and any(f["severity"] == "error" and "Gather" in f["message"]
                             for f in report["models"][0]["findings"]), report


ENCODERS = {  # name -> (transformers' classes, positions, the --shape given, sizes compared with PyTorch)
    "bert": ("BertConfig", "BertModel", 128, "3x24", ((3, 24), (1, 48), (2, 16))),
    "roberta": ("RobertaConfig", "RobertaModel", 66, "1x40", ((1, 40), (2, 64), (3, 7))),
}


@pytest.mark.parametrize("name", ENCODERS)
def test_a_healthy_encoder_given_one_shape_is_still_written(name, tmp_path):
    """RoBERTa's positions are a cumulative sum of its mask (no Range), so the graph shows no length limit: 64
    tokens here (66 positions, 2 for padding). Given 1x40, a length moved to 80 failed where PyTorch fails too, and
    `repair` refused a healthy model it wrote before (helper 90); only the batch is moved now."""
    from fixtures.library_models import import_transformers

    tf = import_transformers()
    config_class, model_class, positions, given, compared = ENCODERS[name]
    torch.manual_seed(0)
    config = getattr(tf, config_class)(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, vocab_size=100, max_position_embeddings=positions)
    module = Hidden(getattr(tf, model_class)(config)).eval()
    path = export(module, tmp_path / f"{name}.onnx", 2, 16)
    if name == "roberta":
        with torch.no_grad(), pytest.raises((IndexError, RuntimeError), match="out of"):
            module(*(torch.from_numpy(v) for v in feeds(1, 80).values()))  # past its table in PyTorch too
    out = tmp_path / "out.onnx"
    code, report = graphfix("repair", str(path), "-o", str(out), *shapes(given))
    assert code == 0 and report["models"][0]["validation"]["passed"], report
    assert len(report["models"][0]["validation"]["sizes"]) == 2, report  # the given size, and the batch moved
    for batch, length in compared:
        assert deviation(out, module, batch, length) < 1e-3


def _timm_at_64(name: str, path):
    """timm's `name` at `img_size=64`, random weights, exported as users do: batch, H and W dynamic."""
    from fixtures.library_models import import_timm

    timm = import_timm()
    torch.manual_seed(0)
    module = timm.create_model(name, img_size=64, num_classes=5).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 3, 64, 64),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["out"],
                          dynamic_axes={"x": {0: "b", 2: "H", 3: "W"}, "out": {0: "b"}})
    return module, path


def _pinned_repaired_and_right(module, path, tmp_path):
    """`set-shape x=bx3x64x64`, then `repair`: exit 0, and the module's outputs at batch 1 and 3."""
    pinned, out = tmp_path / "pinned.onnx", tmp_path / "out.onnx"
    assert CliRunner().invoke(cli, ["set-shape", str(path), "--shape", "x=bx3x64x64", "-o", str(pinned)]).exit_code == 0
    code, report = graphfix("repair", str(pinned), "-o", str(out))
    assert code == 0, report
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)).astype(np.float32)
        got, = run(str(out), {"x": x})
        with torch.no_grad():
            np.testing.assert_allclose(got, module(torch.from_numpy(x)).numpy(), rtol=1e-3, atol=1e-4)


def test_a_healthy_maxvit_given_its_window_multiple_is_written(tmp_path):
    """timm's MaxViT takes multiples of its window (64 pixels at `img_size=64`) and fails elsewhere in PyTorch too;
    `--shape` is how a user keeps the probe inside that domain. A size moved off it (32 by 32) failed as PyTorch
    does, and `repair` refused the healthy model (helper 92); only the batch is moved now."""
    module, path = _timm_at_64("maxvit_nano_rw_256", tmp_path / "maxvit.onnx")
    with torch.no_grad(), pytest.raises(Exception, match="divisible"):
        module(torch.randn(1, 3, 32, 32))  # outside the model in PyTorch too
    out = tmp_path / "out.onnx"
    code, report = graphfix("repair", str(path), "-o", str(out), "--shape", "x=2x3x64x64")
    assert code == 0 and report["models"][0]["validation"]["passed"], report
    for shape in ((1, 3, 64, 64), (3, 3, 128, 128), (2, 3, 192, 128)):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        got, = run(str(out), {"x": x})
        with torch.no_grad():
            np.testing.assert_allclose(got, module(torch.from_numpy(x)).numpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["pit_ti_224", "levit_128s"])
def test_a_model_of_one_image_size_exported_dynamic_is_pinned_as_its_finding_says(name, tmp_path):
    """timm's PiT and LeViT at `img_size=64` hold a position table and attention biases of that size: they take 64
    by 64 only, in PyTorch too, and exported with H and W dynamic they are errors (GF006, GF003) with or without
    `--shape`. The finding says what works (helper 93): fix the dims with `set-shape`, then repair; and a table
    the model uses whole is no table cut with a Python int (helper 114: transformers' Hiera was told so)."""
    module, path = _timm_at_64(name, tmp_path / "m.onnx")
    with torch.no_grad(), pytest.raises(RuntimeError, match="must match the size"):  # PyTorch refuses it too
        module(torch.randn(1, 3, 96, 96))
    code, report = graphfix("diagnose", str(path), "--shape", "x=2x3x64x64")
    found = [f for f in report["models"][0]["findings"] if f["severity"] == "error"]
    assert code == 1 and found and all("graphfix set-shape" in f["hint"] for f in found), report
    tables = [f for f in found if f["rule"] == "GF006"]  # its own parameter used whole, not a table cut (helper 114)
    assert all("used whole" in f["message"] and "not recoverable" not in f["message"] for f in tables), tables
    _pinned_repaired_and_right(module, path, tmp_path)


class BakedBatchGroups(torch.nn.Module):
    """Centres each sample on the batch's mean with the batch read by `int()` while tracing (helper 97): the export
    reshapes to `[-1, 3, T, 8]`, runs at every multiple of 3 and is wrong at all but 3 (0.6 off at 6)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        h = self.proj(x)
        groups = h.reshape(-1, int(h.shape[0]), h.shape[1], 8)
        return (groups - groups.mean(1, keepdim=True)).reshape(h.shape)


def musicgen():
    """transformers' MusicGen decoder: `input_ids` are batch x codebooks rows, `reshape(-1, 2, T)`."""
    from fixtures.library_models import import_transformers

    tf = import_transformers()
    torch.manual_seed(0)
    config = tf.MusicgenDecoderConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      ffn_dim=64, max_position_embeddings=128, num_codebooks=2, pad_token_id=98,
                                      bos_token_id=98)

    class Rows(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = tf.MusicgenModel(config)

        def forward(self, ids):
            return self.model(input_ids=ids).last_hidden_state

    return Rows().eval()


def export_one(module, example, path, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=17, input_names=[name],
                          output_names=["out"], dynamic_axes={name: {0: "batch", 1: "seq"}, "out": {0: "b", 1: "s"}})
    return path


def test_a_batch_split_into_a_fixed_count_is_refused_at_a_moved_batch_and_written_from_given_inputs(tmp_path):
    """MusicGen refuses a count of rows that is no multiple of its 2 codebooks, in PyTorch too; a batch baked by
    `int()` reshapes alike (`[-1, 3, T, 8]`) and runs wrong at every other multiple. `--shape` moves the batch to 1:
    both fail there, and the graph cannot tell them apart (helper 94 found MusicGen refused; moving to another
    multiple instead let the baked batch pass, helper 97). Both are refused, and the hint says which is which and
    what to do: re-export the baked one; give MusicGen's inputs with `--input`, whose sizes are not moved."""
    baked = export_one(BakedBatchGroups().eval(), torch.randn(3, 10, 8), tmp_path / "baked.onnx", "x")
    module = musicgen()
    rows = export_one(module, torch.randint(0, 98, (4, 24)), tmp_path / "musicgen.onnx", "input_ids")
    with torch.no_grad(), pytest.raises(RuntimeError, match="shape"):
        module(torch.randint(0, 98, (1, 8)))  # PyTorch refuses one row too
    for path, given in [(baked, "x=3x16x8"), (baked, "x=6x16x8"), (rows, "input_ids=4x16")]:
        code, report = graphfix("repair", str(path), "-o", str(tmp_path / "out.onnx"), "--shape", given)
        assert code == 1, report
        note = next(n for n in report["models"][0]["notes"] if n.startswith("unchanged model fails"))
        assert "batch = 1 is not the size --shape gave" in note and "re-export" in note and "--input" in note, note
    ids = tmp_path / "ids.npy"
    np.save(ids, np.random.default_rng(0).integers(0, 98, (4, 16)))
    out = tmp_path / "out.onnx"
    code, report = graphfix("repair", str(rows), "-o", str(out), "--input", f"input_ids={ids}")
    assert code == 0, report
    for batch, length in [(2, 24), (6, 40), (4, 9)]:
        given = np.random.default_rng(length).integers(0, 98, (batch, length))
        got, = run(str(out), {"input_ids": given})
        with torch.no_grad():
            np.testing.assert_allclose(got, module(torch.from_numpy(given)).numpy(), rtol=1e-4, atol=1e-4)


def test_a_grid_read_from_the_configuration_says_how_to_pin_it(tmp_path):
    """timm's CoaT-Lite at `img_size=64` reshapes its tokens to the 16 x 16 grid its configuration holds: it takes
    64 by 64 only, in PyTorch too. Exported with H and W dynamic, GF004's error names `set-shape` (helper 114: the
    hint named re-exporting and `--shape` multiples only), and the pinned model is repaired and right."""
    module, path = _timm_at_64("coat_lite_tiny", tmp_path / "m.onnx")
    code, report = graphfix("diagnose", str(path))
    found = [f for f in report["models"][0]["findings"] if f["severity"] == "error"]
    assert code == 1 and found and all("graphfix set-shape" in f["hint"] for f in found), report
    _pinned_repaired_and_right(module, path, tmp_path)
