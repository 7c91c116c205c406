"""GF008 on a pad that rounds a length up to a multiple, computed with `int()` while tracing (chunked attention,
window partitions, frame stacking), exported by the TorchScript exporter with dynamic batch and time: found from
the Reshape that splits the padded length into chunks, rebuilt as `(k - T % k) % k`, and the repair matches
PyTorch at lengths of every residue; the healthy spelling is quiet; a wrong rebuild is refused by the proof."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import graphfix
from graphfix.core.rule import Safety
from graphfix.validate import ValidationOptions, validate

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

CHUNK = 4
SIZES = ((1, 3), (2, 7), (3, 12), (2, 9), (1, 14))  # every residue of T mod 4


class Chunked(torch.nn.Module):
    def __init__(self, healthy: bool = False):
        super().__init__()
        self.healthy = healthy

    def forward(self, x):  # x [B, T, C] -> [B, ceil(T / 4), C]: sums over chunks of 4 frames
        length = x.shape[1] if self.healthy else int(x.shape[1])
        pad = (CHUNK - length % CHUNK) % CHUNK
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        return x.reshape(x.shape[0], -1, CHUNK, x.shape[2]).sum(2)


def export(module, path, dynamo: bool = False) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 7, 8),), str(path), dynamo=dynamo, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "chunks"}})


def run(model, x):
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def inputs(batch, time):
    return np.random.default_rng(batch * 100 + time).standard_normal((batch, time, 8)).astype(np.float32)


def test_a_pad_baked_by_int_is_found_rebuilt_and_matches_pytorch_at_every_residue(tmp_path):
    path = tmp_path / "chunked.onnx"
    export(Chunked(), path)
    with pytest.raises(Exception, match="reshape"):
        run(path, inputs(2, 8))  # another residue than the export length's

    findings = [f for f in graphfix.diagnose(path, static=True) if f.severity.value != "info"]
    assert [f.rule for f in findings] == ["GF008"]
    assert "constant 1" in findings[0].message and "multiple of 4" in findings[0].message
    # rounding up to 8 also gives 1 at T=7 and makes every length whole chunks of 4: not determined
    assert findings[0].fix.safety is Safety.UNSAFE
    assert "(8 - time % 8) % 8" in findings[0].fix.reason, findings[0].fix.reason
    assert graphfix.repair(path).status != "repaired"  # not by default

    result = graphfix.repair(path, unsafe_fixes=True)
    assert result.status == "repaired", result.error
    # the re-traced original is the derived check: it matched wherever the original fails
    assert result.validation["derived"]["matched"] >= 2 and result.validation["derived"]["differed"] == 0
    for batch, time in SIZES:
        x = inputs(batch, time)
        np.testing.assert_allclose(run(result.model, x), Chunked()(torch.from_numpy(x)).numpy(), rtol=1e-5,
                                   atol=1e-6)


class PadsAWholeChunk(torch.nn.Module):  # `4 - T % 4`: a whole chunk of padding where T is a multiple already
    def forward(self, x):
        x = torch.nn.functional.pad(x, (0, 0, 0, CHUNK - int(x.shape[1]) % CHUNK))
        return x.reshape(x.shape[0], -1, CHUNK, x.shape[2]).sum(2)


@pytest.mark.parametrize("module", [Chunked(), PadsAWholeChunk()], ids=["round-up", "whole-chunk"])
def test_a_pad_given_its_export_length_is_not_told_from_one_that_pads_a_whole_chunk(tmp_path, module):
    """At T=17 both pad 3 and the graphs are the same; they part at multiples of 4 (0 or 4 frames). With the export
    length given, the round-up was applied by default, and the whole-chunk module was written wrong with exit 0
    (helper 46). Now the finding names both, and the default repair writes nothing."""
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 17, 8),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "chunks"}})
    trace = {"x": (2, 17, 8)}
    (finding,) = [f for f in graphfix.diagnose(path, static=True, trace_shapes=trace) if f.rule == "GF008"]
    assert finding.fix.safety is Safety.UNSAFE and "4 - time % 4" in finding.fix.reason, finding.fix.reason
    result = graphfix.repair(path, output=str(tmp_path / "out.onnx"), trace_shapes=trace)
    assert result.status != "repaired" and not (tmp_path / "out.onnx").exists()


class WholeChunkOf16(torch.nn.Module):  # `16 - T % 16`: at T=19 no default probe is a multiple of 16
    def forward(self, x):
        x = torch.nn.functional.pad(x, (0, 0, 0, 16 - int(x.shape[1]) % 16))
        return x.reshape(x.shape[0], -1, 16, x.shape[2]).sum(2)


def test_the_export_companion_keeps_the_round_up_only_where_a_probe_is_a_multiple_of_the_chunk(tmp_path):
    """Helper 47: exported at T=19 with chunks of 16, no probe (38, 57, 20, 18, 1, 95, 152) was a multiple of 16,
    and graphfix.export kept the round-up for a module that pads a whole chunk: ok, and wrong at T=32. The far
    probes now include the first multiple of 16 from 5 times the example (96); since helper 160 the default proof
    takes them too, so the guess fails in the proof itself. With `probe_args` given, far past the example, the
    far sizes are where it fails."""
    path = tmp_path / "m.onnx"
    axes = {"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "chunks"}}
    report = graphfix.export(WholeChunkOf16().eval(), (torch.randn(2, 19, 8),), path, input_names=["x"],
                             output_names=["y"], dynamic_axes=axes)
    assert not report.ok and not path.exists() and not report.repairs, report.summary()
    given = [(torch.randn(2, t, 8),) for t in (38, 57, 20)]  # none a multiple of 16
    report = graphfix.export(WholeChunkOf16().eval(), (torch.randn(2, 19, 8),), path, input_names=["x"],
                             output_names=["y"], dynamic_axes=axes, probe_args=given)
    assert not report.ok and not path.exists(), report.summary()
    assert any("differs from the module" in s for s in report.skipped), report.skipped


def test_a_rebuilt_pad_of_the_wrong_multiple_is_refused(tmp_path):
    path = tmp_path / "chunked.onnx"
    export(Chunked(), path)
    repaired = graphfix.repair(path, simplify=False, unsafe_fixes=True).model
    wrong = onnx.ModelProto()
    wrong.CopyFrom(repaired)
    mod = next(n for n in wrong.graph.node if n.op_type == "Mod")
    wrong.graph.initializer.append(numpy_helper.from_array(np.array([CHUNK - 1], np.int64), "wrong_chunk"))
    mod.input[1] = "wrong_chunk"
    assert validate(onnx.load(path), repaired, ValidationOptions()).passed  # the right rebuild passes
    assert not validate(onnx.load(path), wrong, ValidationOptions()).passed


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_the_healthy_spelling_is_quiet(tmp_path, dynamo):
    path = tmp_path / "healthy.onnx"
    export(Chunked(healthy=True), path, dynamo=dynamo)
    assert not [f for f in graphfix.diagnose(path, static=True) if f.rule == "GF008"]
    for batch, time in SIZES[:3]:
        x = inputs(batch, time)
        np.testing.assert_allclose(run(path, x), Chunked(healthy=True)(torch.from_numpy(x)).numpy(), rtol=1e-5,
                                   atol=1e-6)
