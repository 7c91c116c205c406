"""Surgery checks run the written model with the fusions a user's session runs (helper 72).

A dynamo export of an LSTM with batch 1 and a dynamic time axis (a streaming ASR encoder) declares the LSTM's output
`[1, 7, 24]` at the export length 7. With optimizations off, onnxruntime runs the graph at every length; with its
default optimizations, which every `ort.InferenceSession` a user makes has, its MatMul fusion trusts the declared 7
and reshapes to `[7, 24]`, failing at every other length. `freeze` and `extract` checked their output with
optimizations off and wrote it with "check: passed" and exit 0. Their checks now run it with onnxruntime's basic
optimizations (that fusion is one; not the extended ones, which change a quantized model's outputs by a
quantization step by design: helper 75's QDQ model failed freeze, set-shape and extract). `freeze` and
`extract` now also declare the dims the original returns where a declared number contradicts them, so their
outputs run there. A healthy model still passes both ways.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from graphfix.cli import cli
from graphfix.validate.runner import ModelRunner

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.rnn, self.mid, self.out = torch.nn.LSTM(16, 24, batch_first=True), torch.nn.Linear(24, 24), \
            torch.nn.Linear(24, 5)

    def forward(self, x, mask):
        y, _ = self.rnn(x)
        return y, self.out(torch.relu(self.mid(y)) * mask.unsqueeze(-1).to(x.dtype))


def _export(path, dynamo: bool):
    """Batch 1, time dynamic: with dynamo (which declares the LSTM's output at the export length), or with the
    TorchScript exporter (which does not)."""
    args, names = (torch.randn(1, 7, 16), torch.ones(1, 7, dtype=torch.bool)), ["x", "mask"]
    if dynamo:
        time = torch.export.Dim("time")
        kwargs = {"dynamo": True, "dynamic_shapes": ({1: time}, {1: time})}
    else:
        kwargs = {"dynamo": False, "dynamic_axes": {"x": {1: "time"}, "mask": {1: "time"}, "rnn": {1: "time"},
                                                     "logits": {1: "time"}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder().eval(), args, str(path), input_names=names, output_names=["rnn", "logits"],
                          opset_version=18, **kwargs)
    return path


def _runs_optimized(path, lengths) -> bool:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # the defaults: optimizations on
    feeds = {"x": lambda t: np.random.randn(1, t, 16).astype(np.float32), "mask": lambda t: np.ones((1, t), bool)}
    try:
        for t in lengths:
            session.run(None, {i.name: feeds[i.name](t) for i in session.get_inputs()})
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def dynamo_lstm(tmp_path_factory):
    """Exported in a fresh interpreter: after another LSTM's dynamo export in the same process (another test
    file's, on the same xdist worker), torch 2.13 specializes the time axis, even after `torch._dynamo.reset()`."""
    path = tmp_path_factory.mktemp("dynamo") / "lstm.onnx"
    here = str(Path(__file__).resolve().parent)
    subprocess.run([sys.executable, "-c", f"import sys, pathlib; sys.path.insert(0, {here!r}); "
                    f"import test_surgery_deployed as t; t._export(pathlib.Path({str(path)!r}), dynamo=True)"],
                   check=True, capture_output=True, timeout=600)
    assert not _runs_optimized(path, [3, 20])  # the export itself: what the surgery's output inherits
    return path


def test_a_model_that_fails_with_the_fusions_users_run_fails_its_check_there(dynamo_lstm):
    """The export itself, as a written model is run by every surgery check: it runs with optimizations off and
    fails with the basic ones, and the failure says so."""
    feeds = {"x": np.random.randn(1, 3, 16).astype(np.float32), "mask": np.ones((1, 3), bool)}
    assert ModelRunner.from_source(dynamo_lstm).run(feeds).ok
    got = ModelRunner.from_source(dynamo_lstm, deployed=True).run(feeds)
    assert not got.ok and "basic graph optimizations" in got.error, got.error


def test_a_frozen_model_declares_what_the_original_returns_and_runs_in_a_default_session(tmp_path, dynamo_lstm):
    """freeze declares the dims the original returns where a declared number contradicts them, as extract does,
    so the frozen LSTM runs in a default session (before: refused, exit 1; before that, written and failing)."""
    out = tmp_path / "frozen.onnx"
    done = CliRunner().invoke(cli, ["freeze", str(dynamo_lstm), "--input", "mask=true", "-o", str(out)],
                              catch_exceptions=False)
    assert done.exit_code == 0 and "declared [1, time, 5]" in done.output, done.output
    assert _runs_optimized(out, [3, 7, 20])


def test_an_extracted_part_declares_what_the_whole_returns_and_runs_in_a_default_session(tmp_path, dynamo_lstm):
    """extract declares the dims the whole returns where a declared number contradicts them (the export length 7
    becomes `time`, test_surgery_extract_declared.py), so its part runs in a default session."""
    out = tmp_path / "part.onnx"
    done = CliRunner().invoke(cli, ["extract", str(dynamo_lstm), "--inputs", "x,mask", "--outputs", "logits", "-o",
                                    str(out)], catch_exceptions=False)
    assert done.exit_code == 0 and "declared [1, time, 5]" in done.output, done.output
    assert _runs_optimized(out, [3, 7, 20])


def test_a_part_that_runs_in_a_default_session_is_written(tmp_path):
    """The control: the same encoder exported with TorchScript declares no export length, and runs both ways."""
    path = _export(tmp_path / "lstm.onnx", dynamo=False)
    out = tmp_path / "frozen.onnx"
    done = CliRunner().invoke(cli, ["freeze", str(path), "--input", "mask=true", "-o", str(out)],
                              catch_exceptions=False)
    assert done.exit_code == 0 and out.exists(), done.output
    assert _runs_optimized(out, [3, 7, 20])


def test_a_quantized_model_s_part_is_compared_without_the_integer_kernels(tmp_path):
    """onnxruntime's own `quantize_static` QDQ output: its extended optimizations run integer kernels that differ
    from the graph by a quantization step (0.005 here), so the check runs the basic ones (helper 75)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.left = [{"x": np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32)}
                         for i in range(4)]

        def get_next(self):
            return self.left.pop() if self.left else None

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 8, 3, padding=1, stride=2), torch.nn.ReLU()).eval()
    plain, quantized, out = tmp_path / "plain.onnx", tmp_path / "qdq.onnx", tmp_path / "frozen.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(plain), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B", 2: "H", 3: "W"}})
        quantize_static(str(plain), str(quantized), Calibration(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    done = CliRunner().invoke(cli, ["set-shape", str(quantized), "--shape", "x=1x3x16x16", "-o", str(out)],
                              catch_exceptions=False)
    assert done.exit_code == 0 and out.exists(), done.output
