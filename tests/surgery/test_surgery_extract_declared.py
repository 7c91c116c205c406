"""`graphfix extract` declares what the part returns (red team, helper 72/74).

The dynamo exporter declares an LSTM's output `rnn` as `[batch, 7, 24]`, 7 the export length, although the graph
computes the time length at every size. extract carried the stale 7 into its parts: `--inputs x --outputs relu`
was written with exit 0 declaring `relu [batch, 7, 24]` while returning `[3, 20, 24]`, and the encoder/joint
split `--inputs rnn|relu --outputs logits` was refused at every size (the part's input fixed at 7). A declared
int that the whole contradicts at a probe size is now symbolic, and the check refuses a part whose declared
output dims differ from what it returns.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnx.parser
import pytest
from click.testing import CliRunner
from conftest import run

from graphfix.cli import cli
from graphfix.io.loading import load_model
from graphfix.surgery.extract import check_part, extract
from graphfix.validate import ValidationOptions

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

SIZES = [(1, 3), (1, 20), (3, 3), (3, 20)]  # batch, time


class Tagger(torch.nn.Module):
    """An LSTM encoder and a joint-like head: outputs the LSTM's sequence and the logits."""

    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(16, 24, batch_first=True)
        self.joint = torch.nn.Linear(24, 24)
        self.out = torch.nn.Linear(24, 5)

    def forward(self, x):
        y, _ = self.rnn(x)
        return y, self.out(torch.relu(self.joint(y)))


@pytest.fixture(scope="module")
def lstm(tmp_path_factory):
    """Exported once per module: a second dynamo export of the same class in one process may fix the time axis."""
    torch.manual_seed(0)
    module = Tagger().eval()
    path = tmp_path_factory.mktemp("lstm") / "lstm_dyn.onnx"
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.randn(2, 7, 16),), str(path), input_names=["x"],
                              output_names=["rnn", "logits"], dynamo=True, opset_version=18, verbose=False,
                              dynamic_shapes=({0: batch, 1: time},))
    except Exception as exc:  # the exporter itself, not graphfix
        pytest.skip(f"export failed: {type(exc).__name__}")
    model = onnx.load(path)
    if dims(model.graph.output[0])[1] != 7:
        pytest.skip("this torch no longer declares the export length")
    relu = next(n.output[0] for n in model.graph.node if n.op_type == "Relu")
    return module, path, relu


def dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def torch_values(module, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        y, _ = module.rnn(torch.from_numpy(x))
        relu = torch.relu(module.joint(y))
        return {"rnn": y.numpy(), "relu": relu.numpy(), "logits": module.out(relu).numpy()}


def feed(batch: int, time: int) -> np.ndarray:
    return np.random.default_rng(batch * 100 + time).standard_normal((batch, time, 16)).astype(np.float32)


def assert_declares_what_it_returns(vi: onnx.ValueInfoProto, value: np.ndarray, batch: int, time: int,
                                    time_dim) -> None:
    bound = {"batch": batch, time_dim: time}
    assert [bound.get(d, d) for d in dims(vi)] == list(value.shape), (dims(vi), value.shape)


def test_the_head_declares_the_time_axis_not_the_export_length(lstm, tmp_path):
    module, path, relu = lstm
    result = extract(load_model(path), ["x"], [relu], tmp_path / "head.onnx")
    assert result.status == "written", result.error
    part = onnx.load(tmp_path / "head.onnx")
    onnx.checker.check_model(part, full_check=True)
    declared = dims(part.graph.output[0])
    assert declared[0] == "batch" and isinstance(declared[1], str) and declared[2] == 24, declared  # 24 stays
    assert any("rnn" in note and "7" in note for note in result.notes), result.notes
    for batch, time in SIZES:
        x = feed(batch, time)
        (got,) = run(part, {"x": x})
        assert_declares_what_it_returns(part.graph.output[0], got, batch, time, declared[1])
        np.testing.assert_allclose(got, torch_values(module, x)["relu"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("boundary", ["rnn", "RELU"])
def test_the_joint_split_is_accepted_and_matches(lstm, tmp_path, boundary):
    module, path, relu = lstm
    name = relu if boundary == "RELU" else boundary
    result = extract(load_model(path), [name], ["logits"], tmp_path / "tail.onnx")
    assert result.status == "written", result.error
    assert len(result.checks) >= 3 and all(c["ok"] for c in result.checks)
    part = onnx.load(tmp_path / "tail.onnx")
    onnx.checker.check_model(part, full_check=True)
    declared_in, declared_out = dims(part.graph.input[0]), dims(part.graph.output[0])
    assert declared_in[0] == "batch" and isinstance(declared_in[1], str) and declared_in[2] == 24, declared_in
    assert declared_out[1] == declared_in[1] and declared_out[2] == 5, declared_out
    for batch, time in SIZES:
        x = feed(batch, time)
        want = torch_values(module, x)
        (got,) = run(part, {name: want[boundary.lower()]})
        assert_declares_what_it_returns(part.graph.output[0], got, batch, time, declared_in[1])
        np.testing.assert_allclose(got, want["logits"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got, run(str(path), {"x": x})[1], rtol=1e-4, atol=1e-5)


def test_cli_writes_the_encoder_joint_split(lstm, tmp_path):
    _, path, relu = lstm
    for inputs, outputs, out in (("x", relu, "head.onnx"), ("rnn", "logits", "tail.onnx")):
        result = CliRunner().invoke(cli, ["extract", str(path), "--inputs", inputs, "--outputs", outputs,
                                          "-o", str(tmp_path / out)])
        assert result.exit_code == 0 and "written" in result.stdout, result.stdout + result.stderr
    x = feed(3, 20)
    (head,) = run(str(tmp_path / "head.onnx"), {"x": x})
    (tail,) = run(str(tmp_path / "tail.onnx"), {"rnn": run(str(path), {"x": x})[0]})
    np.testing.assert_allclose(tail, run(str(path), {"x": x})[1], rtol=1e-4, atol=1e-5)
    assert head.shape == (3, 20, 24)


STALE = """
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[N, T] x) => (float[N, 7] y) {
        y = Relu(x)
    }"""


def test_a_confirmed_int_stays_and_a_contradicted_one_goes(tmp_path):
    """`y` declares 7 for T (contradicted at every probe but the export one) and nothing else."""
    whole = tmp_path / "stale.onnx"
    onnx.save(onnx.parser.parse_model(STALE.replace("float[N, T] x", "float[N, T, 3] x").replace(
        "float[N, 7] y", "float[N, 7, 3] y")), whole)
    result = extract(load_model(whole), ["x"], ["y"], tmp_path / "part.onnx")
    assert result.status == "written", result.error
    assert dims(onnx.load(tmp_path / "part.onnx").graph.output[0]) == ["N", "T", 3]


def test_a_part_that_declares_what_it_does_not_return_fails_its_check(tmp_path):
    whole, staged = tmp_path / "whole.onnx", tmp_path / "staged.onnx"
    onnx.save(onnx.parser.parse_model(STALE.replace("float[N, 7] y", "float[N, T] y")), whole)
    onnx.save(onnx.parser.parse_model(STALE), staged)
    checks, reasons = check_part(load_model(whole), staged, ["x"], ["y"], ValidationOptions())
    assert checks and reasons, checks
    assert any("output 'y' dim 1 is" in r and "the part declares 7" in r for r in reasons), reasons
