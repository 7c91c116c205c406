"""`graphfix bench`: models side by side per batch size, percentiles, throughput, RTF, warm-up excluded and
reported, the PyTorch comparison, and clean refusals (no CUDA, fixed batch dims)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from conftest import parse

from graphfix.cli import bench as bench_cli
from graphfix.cli import cli
from graphfix.io.loading import from_proto, load_model
from graphfix.surgery.bench import BenchOptions, bench, bench_torch, make_session

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
if "bench" not in cli.commands:  # until the lead registers it in graphfix/cli/__init__.py
    cli.add_command(bench_cli.command)

DYNAMIC = """<ir_version: 10, opset_import: ["" : 17]>
g (float[batch, samples] audio) => (float[batch, samples] y) { y = Relu(audio) }"""
FIXED = """<ir_version: 10, opset_import: ["" : 17]>
g (float[1, samples] audio) => (float[1, samples] y) { y = Tanh(audio) }"""


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def models(tmp_path):
    onnx.save(parse(DYNAMIC), tmp_path / "original.onnx")
    onnx.save(parse(FIXED), tmp_path / "fixed_batch.onnx")
    return tmp_path / "original.onnx", tmp_path / "fixed_batch.onnx"


def test_models_side_by_side_per_batch(models):
    dynamic, _ = models
    options = BenchOptions(shapes={"audio": (None, 16000)}, batches=[1, 4], warmup=2, runs=5, audio_seconds=1.0)
    rows = bench([load_model(dynamic), load_model(dynamic)], options)
    assert [(r.batch, Path(r.model).name) for r in rows] == [(1, "original.onnx")] * 2 + [(4, "original.onnx")] * 2
    for row in rows:
        assert row.error is None and row.shapes == {"audio": [row.batch, 16000]}
        assert set(row.latency_ms) == {"p50", "p90", "max", "mean"}
        assert row.latency_ms["p50"] <= row.latency_ms["p90"] <= row.latency_ms["max"]
        assert len(row.warmup_ms) == 2
        assert row.rtf == pytest.approx(row.latency_ms["p50"] / 1e3 / row.batch, rel=1e-3, abs=1e-6)
        assert row.throughput == pytest.approx(row.batch * 1e3 / row.latency_ms["mean"], rel=0.02)


def test_warmup_is_excluded_and_reported():
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, audio):
            calls.append(audio.shape)
            return audio * 2

    model = parse(DYNAMIC)
    like = from_proto(model)
    rows = bench_torch(Counting(), like, BenchOptions(batches=[3], warmup=4, runs=6))
    assert len(calls) == 10 and len(rows[0].warmup_ms) == 4 and rows[0].batch == 3
    assert rows[0].to_json()["warmup"]["excluded"] is True and rows[0].provider == "torch-cpu"


def test_onnxruntime_vs_pytorch_on_the_same_inputs(tmp_path):
    spec = importlib.util.spec_from_file_location("sample_aed", SAMPLES / "encoder_decoder" / "make_model.py")
    aed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(aed)
    module = aed.build(tmp_path / "aed.onnx")
    options = BenchOptions(shapes={"features": (None, 80, 16), "tokens": (None, 5)}, batches=[2], warmup=1, runs=3,
                           audio_seconds=0.8)
    rows = bench([load_model(tmp_path / "aed.onnx")], options) + bench_torch(module, load_model(tmp_path / "aed.onnx"),
                                                                            options)
    assert [r.error for r in rows] == [None, None]
    assert rows[0].shapes == rows[1].shapes == {"features": [2, 80, 16], "tokens": [2, 5]}
    assert all(r.rtf is not None for r in rows)


def test_cli_text_and_json(models):
    dynamic, _ = models
    code, out, _ = invoke("bench", dynamic, dynamic, "--shape", "audio=1x8000", "--batch", "1,2", "--runs", "3",
                          "--warmup", "1", "--audio-seconds", "0.5")
    assert code == 0 and out.count("original.onnx") == 4 and "warm-up: 1 run(s) per row excluded" in out
    code, out, _ = invoke("bench", dynamic, "--runs", "2", "--format", "json", "--threads", "1")
    row = json.loads(out)["bench"][0]
    assert code == 0 and row["batch"] == 1 and row["rtf"] is None and row["warmup"]["runs"] == 3


def test_json_holds_an_infinite_rtf_as_its_name(models):
    """A real-time factor over 1e-320 s of audio is infinite: `json.dumps` wrote `Infinity`, which no JSON parser
    reads (helper 126)."""
    dynamic, _ = models
    code, out, _ = invoke("bench", dynamic, "--runs", "2", "--format", "json", "--audio-seconds", "1e-320")

    def refuse(constant):
        raise ValueError(constant)

    assert code == 0 and json.loads(out, parse_constant=refuse)["bench"][0]["rtf"] == "inf", out


def test_fixed_batch_dim_is_an_error_row(models):
    dynamic, fixed = models
    code, out, _ = invoke("bench", dynamic, fixed, "--batch", "4", "--runs", "2", "--warmup", "0")
    assert code == 1 and "input 'audio' has a fixed leading dim 1" in out


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_cuda_unavailable_is_a_usage_error(models):
    code, out, err = invoke("bench", models[0], "--provider", "cuda")
    assert code == 2 and out == "" and "CUDAExecutionProvider is not available" in err and err.count("\n") == 1


@pytest.mark.parametrize("args", [["--runs", "0"], ["--batch", "0"], ["--batch", "a,b"], ["--audio-seconds", "-1"]])
def test_bad_options_exit_2(models, args):
    code, _, err = invoke("bench", models[0], *args)
    assert code == 2 and err.count("\n") == 1


def test_threads_reach_the_session(models):
    session = make_session(load_model(models[0]), BenchOptions(threads=1))
    assert session.get_session_options().intra_op_num_threads == 1
