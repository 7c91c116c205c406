"""GF004 where several entries of a baked shape could stand for the size: the proof chooses among them.

nn.MultiheadAttention traced at a length equal to its head size (time 4, 16 / 4 heads) bakes
`Concat([4], B*heads, [4])`: entry 0 and entry 2 both equal the length at export and both satisfy the element
count. `diagnose --static` names both candidates; `repair` builds each combination, validates it against the
original re-traced with the same choice, and applies the one the proof alone accepts. Where two candidates give
the same outputs everywhere, the proof cannot tell them apart and nothing is applied by default; --unsafe-fixes
applies the first and says so."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import graphfix
from graphfix.cli import cli

pytest.importorskip("torch")
import torch
from fixtures.torch_models import attention

pytestmark = [pytest.mark.torch, pytest.mark.slow]

HEAD_SIZE = 4  # D_MODEL 16 / HEADS 4
SIZES = ((1, 3), (2, HEAD_SIZE), (3, 9))  # batch 1, the export size, a longer length


def repair(source, target, *args: str) -> tuple[int, str]:
    done = CliRunner().invoke(cli, ["repair", str(source), "-o", str(target), *args])
    return done.exit_code, done.output


@pytest.mark.parametrize("kind,bf", [("mha", False), ("encoder", True), ("encoder-decoder", False)])
def test_attention_traced_at_its_head_size_is_repaired_by_the_proofs_choice(kind, bf, tmp_path):
    case = dataclasses.replace(attention(kind, bf), export_size=(2, HEAD_SIZE))
    case.export(tmp_path / "m.onnx")
    ambiguous = [f for f in graphfix.diagnose(tmp_path / "m.onnx", static=True) if f.choice is not None]
    assert ambiguous, "the fixture no longer has two candidate entries; the test would prove nothing"
    assert all(f.fix is None and "entry 0 (4 = time), entry 2 (4 = time)" in f.message for f in ambiguous)

    code, output = repair(tmp_path / "m.onnx", tmp_path / "fixed.onnx")
    assert code == 0, output
    assert "the proof chose among 2 candidate combination(s)" in output and "entry 0 (4 = time)" in output
    session = ort.InferenceSession(str(tmp_path / "fixed.onnx"), providers=["CPUExecutionProvider"])
    for batch, time in SIZES:
        feeds = case.inputs(batch, time)
        np.testing.assert_allclose(session.run(None, feeds)[0], case.torch_output(feeds), rtol=1e-4, atol=1e-5)


class Regroup(torch.nn.Module):
    """`x.reshape(b, int(t), 4).reshape(b, -1)` on x[b, t, 4] traced at t=4: entry 1 and entry 2 both rebuild
    it, and the two repairs give the same outputs at every size."""

    def forward(self, x):
        b, t = x.shape[0], int(x.shape[1])
        return x.reshape(b, t, 4).reshape(b, -1) * 2


def regroup(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Regroup(), (torch.randn(2, 4, 4),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b", 1: "t"}, "y": {0: "b", 1: "f"}})
    ambiguous = [f for f in graphfix.diagnose(path, static=True) if f.choice is not None]
    assert ambiguous, "the fixture no longer has two candidate entries; the test would prove nothing"
    return path


def test_candidates_the_proof_cannot_tell_apart_are_reported_and_not_applied(tmp_path):
    code, output = repair(regroup(tmp_path / "m.onnx"), tmp_path / "fixed.onnx")
    assert "ambiguous: 2 of 2 candidate combinations pass the proof" in output, output
    assert "none applied" in output and code == 1 and not (tmp_path / "fixed.onnx").exists()


def test_unsafe_fixes_apply_the_first_candidate_and_say_it_may_be_wrong(tmp_path):
    code, output = repair(regroup(tmp_path / "m.onnx"), tmp_path / "fixed.onnx", "--unsafe-fixes")
    assert code == 0, output
    assert "--unsafe-fixes applied the first, '/Reshape' entry 1 (4 = t)" in output, output
    assert "it may be wrong" in output
    session = ort.InferenceSession(str(tmp_path / "fixed.onnx"), providers=["CPUExecutionProvider"])
    for batch, time in SIZES:
        x = np.random.default_rng(time).standard_normal((batch, time, 4)).astype(np.float32)
        np.testing.assert_allclose(session.run(None, {"x": x})[0], x.reshape(batch, -1) * 2, rtol=1e-6)
