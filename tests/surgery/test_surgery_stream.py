"""`graphfix stream`: a Wenet-style chunk encoder whose attention cache grows every step is caught (naming the pair
and the step); the same encoder with a fixed-size cache passes; unread caches, caches that do not depend on their
input or on the chunk, dtype changes and NaNs are reported; latency trend."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import parse

from graphfix.cli import cli
from graphfix.cli import stream as stream_cli
from graphfix.io.loading import load_model
from graphfix.surgery.stream import StreamOptions, StreamReport, stream, trend

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
if "stream" not in cli.commands:  # until the lead registers it in graphfix/cli/__init__.py
    cli.add_command(stream_cli.command)
FEEDBACK = {"r_att_cache": "att_cache", "r_cnn_cache": "cnn_cache"}


def sample(name: str):
    spec = importlib.util.spec_from_file_location(f"sample_{name}", SAMPLES / name / "make_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WENET = sample("streaming_cache")
ATT = (WENET.LAYERS, WENET.HEADS, 8, 2 * WENET.HEAD_DIM)


@pytest.fixture(scope="module", params=[14, 17])
def encoders(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"wenet{request.param}")
    WENET.build(folder / "growing.onnx", grow=True, opset=request.param)
    module = WENET.build(folder / "fixed.onnx", grow=False, opset=request.param)
    return folder, module


# Latency is the machine's (a test worker beside it doubles a step's time): these tests judge the caches, with a
# tolerance no load reaches; test_latency_trend judges the latency rule on given times.
ANY_LATENCY = 1e6


def options(steps=6, cache=8) -> StreamOptions:
    return StreamOptions(steps=steps, shapes={"chunk": (1, 4, WENET.FEATURES), "att_cache": (*ATT[:2], cache, ATT[3])},
                         latency_tolerance=ANY_LATENCY)


def test_fixed_size_cache_passes(encoders):
    folder, _ = encoders
    report = stream(load_model(folder / "fixed.onnx"), FEEDBACK, options())
    assert report.passed, report.problems
    assert report.steps_run == 6 and len(report.latency_ms) == 6 and report.warmup_ms is not None
    assert report.trend["cache_bytes"]["flat"] and len(set(report.cache_bytes)) == 1
    assert report.cache_shapes["att_cache"] == [list(ATT)] * 6


@pytest.mark.parametrize("initial", [0, 8])  # wenet starts with an empty cache; a warm one grows just the same
def test_growing_cache_is_caught_at_step_1(encoders, initial):
    folder, _ = encoders
    report = stream(load_model(folder / "growing.onnx"), FEEDBACK, options(cache=initial))
    assert not report.passed
    first = report.problems[0]
    assert first.startswith("pair r_att_cache=att_cache: step 1: shape") and "grows" in first
    assert not any(p.startswith("pair r_cnn_cache") for p in report.problems)  # the conv cache is fine
    assert report.trend["cache_bytes"]["per_step"] == 4 * WENET.LAYERS * WENET.HEADS * 2 * WENET.HEAD_DIM * 4
    assert report.cache_shapes["att_cache"][-1][2] == initial + 4 * 5


def test_streamed_outputs_match_pytorch_step_by_step(encoders):
    """The loop the command runs is the deployment loop: the fixed export streams like the PyTorch module."""
    from graphfix.validate.runner import ModelRunner

    folder, module = encoders
    runner = ModelRunner.from_source(folder / "fixed.onnx")
    att, cnn = np.zeros(ATT, np.float32), np.zeros((WENET.LAYERS, 1, WENET.CHANNELS, WENET.KERNEL), np.float32)
    t_att, t_cnn = torch.from_numpy(att), torch.from_numpy(cnn)
    for step in range(4):
        chunk = np.random.default_rng(step).standard_normal((1, 4, WENET.FEATURES)).astype(np.float32)
        got = runner.run({"chunk": chunk, "att_cache": att, "cnn_cache": cnn}).outputs
        with torch.no_grad():
            out, t_att, t_cnn = module(torch.from_numpy(chunk), t_att, t_cnn)
        np.testing.assert_allclose(got["output"], out.numpy(), rtol=1e-4, atol=1e-5)
        att, cnn = got["r_att_cache"], got["r_cnn_cache"]


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_exit_codes_and_json(encoders):
    folder, _ = encoders
    common = ["--feedback", "r_att_cache=att_cache", "--feedback", "r_cnn_cache=cnn_cache", "--steps", "5",
              "--shape", "chunk=1x4x16", "--shape", "att_cache=2x2x8x16", "--latency-tolerance", str(ANY_LATENCY)]
    code, out, _ = invoke("stream", folder / "fixed.onnx", *common)
    assert code == 0 and "passed: 5 step(s)" in out and "(flat)" in out
    code, out, _ = invoke("stream", folder / "growing.onnx", *common, "--format", "json")
    report = json.loads(out)["models"][0]
    assert code == 1 and not report["passed"] and report["trend"]["cache_bytes"]["flat"] is False
    assert report["problems"][0].startswith("pair r_att_cache=att_cache: step 1")
    code, _, err = invoke("stream", folder / "fixed.onnx", "--feedback", "r_att_cache=nope")
    assert code == 2 and "'nope' is no graph input" in err and err.count("\n") == 1


HEAD = '<ir_version: 10, opset_import: ["" : 18]>\n'
SIG = "g (float[1, T, 4] chunk, float[2, 4] cache) => (float[1, T, 4] out, float[2, 4] r_cache) "
MEAN = "ax = Constant<value = int64[2] {0, 1}>()  m = ReduceMean<keepdims=0>(chunk, ax)  out = Relu(chunk)  "
BROKEN = {
    "unread": ("g (float[1, T, 4] chunk, float[2, 4] cache, float[2, 4] other) => (float[1, T, 4] out, "
               "float[2, 4] r_cache, float[2, 4] r_other) { " + MEAN + "r_cache = Add(cache, m)  "
               "r_other = Add(cache, m) }",
               {"r_cache": "cache", "r_other": "other"}, "cache input 'other' is never read"),
    "baked": (SIG + "{ " + MEAN + "two4 = Constant<value = int64[2] {2, 4}>()  r_cache = Expand(m, two4)  "
              "c = ReduceMean<keepdims=0>(cache)  y = Add(out, c) }",
              {"r_cache": "cache"}, "'r_cache' does not depend on 'cache'"),
    "chunkless": (SIG + "{ out = Relu(chunk)  r_cache = Neg(cache) }",
                  {"r_cache": "cache"}, "'r_cache' depends on no chunk input (chunk)"),
    "dtype": ("g (float[1, T, 4] chunk, float[2, 4] cache) => (float[1, T, 4] out, double[2, 4] r_cache) "
              "{ " + MEAN + "s = Add(cache, m)  r_cache = Cast<to = 11>(s) }",
              {"r_cache": "cache"}, "dtype double fed into float"),
    "nan": (SIG + "{ " + MEAN + "ten = Constant<value = float {10.0}>()  s = Add(cache, m)  d = Sub(s, ten)  "
            "r_cache = Sqrt(d) }",
            {"r_cache": "cache"}, "step 1: the cache has NaN or Inf values"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_loops_are_reported(tmp_path, case):
    text, feedback, message = BROKEN[case]
    onnx.save(parse(HEAD + text), tmp_path / "m.onnx")
    report = stream(load_model(tmp_path / "m.onnx"), feedback, StreamOptions(steps=3))
    assert not report.passed
    assert any(message in p for p in report.problems), report.problems


def test_healthy_text_loop_passes(tmp_path):
    text = SIG + "{ " + MEAN + "s = Add(cache, m)  r_cache = Tanh(s) }"
    onnx.save(parse(HEAD + text), tmp_path / "m.onnx")
    loop = stream(load_model(tmp_path / "m.onnx"), {"r_cache": "cache"},
                  StreamOptions(steps=4, latency_tolerance=ANY_LATENCY))
    assert loop.passed


@pytest.mark.parametrize(("latency", "drifts"), [
    ([1.0] * 9, False),
    ([1.0, 1.1, 0.9, 1.0, 1.2, 1.0, 1.1, 0.9, 1.0], False),
    ([0.05, 0.05, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35], False),  # x7 but 0.3 ms: timer noise on tiny models
    ([1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], True),
])
def test_latency_trend(latency, drifts):
    report = StreamReport("m", [], latency_ms=latency, cache_bytes=[10] * 10)
    result = trend(report, StreamOptions())
    assert result["latency_ms"]["flat"] is not drifts
    assert any("latency drifts" in p for p in result["problems"]) is drifts
