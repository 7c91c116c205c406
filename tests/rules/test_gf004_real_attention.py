"""GF004 on PyTorch's own attention: nn.MultiheadAttention, nn.TransformerEncoderLayer/DecoderLayer and an
encoder-decoder built from them, exported with the TorchScript exporter and dynamic batch and time.

The exporter bakes the key/value length into a `Concat([7], B*heads, [head_dim])` Reshape shape. `diagnose
--static` must name every such Reshape with the size it bakes, `repair` with default flags must fix them (a SAFE
fix from the solved element count), and the result must match PyTorch at sizes including batch 1 and a length
longer than the export one. The repaired encoder-decoder must split with `graphfix extract` into two parts that
each match PyTorch."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import graphfix
from graphfix.cli import cli
from graphfix.core.rule import Safety

pytest.importorskip("torch")
from fixtures.torch_models import EXPORT_TIME, attention

pytestmark = [pytest.mark.torch, pytest.mark.slow]

KINDS = [(kind, bf) for kind in ("mha", "encoder", "decoder", "encoder-decoder") for bf in (True, False)]
SIZES = ((1, 3), (1, EXPORT_TIME), (3, 2 * EXPORT_TIME + 1))  # (batch, time); memory length is time + 2


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder, cache = tmp_path_factory.mktemp("attention"), {}

    def get(kind, bf):
        if (kind, bf) not in cache:
            case = attention(kind, bf)
            path = folder / f"{case.name}.onnx"
            case.export(path)
            cache[kind, bf] = case, path
        return cache[kind, bf]

    return get


def run(model, feeds):
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def baked_reshapes(path) -> dict[str, str]:
    """Reshape node -> the shape its export-time constant stands for, read from the graph itself: a Concat whose
    first input is a constant equal to an export-time length."""
    model = onnx.load(path)
    consts = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t)
              for n in model.graph.node if n.op_type == "Constant"}
    producers = {o: n for n in model.graph.node for o in n.output}
    found = {}
    for node in model.graph.node:
        concat = producers.get(node.input[1]) if node.op_type == "Reshape" else None
        if concat is None or concat.op_type != "Concat":
            continue
        first = consts.get(concat.input[0])
        if first is not None and first.size == 1 and int(first.reshape(-1)[0]) in (EXPORT_TIME, EXPORT_TIME + 2):
            found[node.name] = int(first.reshape(-1)[0])
    return found


@pytest.mark.parametrize("kind,bf", KINDS, ids=[f"{k}-{'bf' if b else 'tf'}" for k, b in KINDS])
def test_baked_attention_reshapes_are_named_and_repaired(exported, kind, bf):
    case, path = exported(kind, bf)
    with pytest.raises(Exception, match="cannot be reshaped"):
        run(path, case.inputs(3, 2 * EXPORT_TIME + 1))  # the export is broken away from its size
    expected = baked_reshapes(path)
    assert expected, "the fixture no longer bakes the length; the test would prove nothing"

    findings = [f for f in graphfix.diagnose(path, static=True) if f.rule == "GF004"]
    named = {f.nodes[0]: f for f in findings}
    assert set(named) == set(expected)
    for node, size in expected.items():
        finding = named[node]
        assert finding.severity.value == "error"
        assert re.search(rf"bakes \w+={size}\b", finding.message), finding.message
        assert finding.fix is not None and finding.fix.safety is Safety.SAFE

    result = graphfix.repair(path)
    assert result.status == "repaired", result.error
    onnx.checker.check_model(result.model, full_check=True)
    for batch, time in SIZES:
        feeds = case.inputs(batch, time)
        np.testing.assert_allclose(run(result.model, feeds), case.torch_output(feeds), rtol=1e-4, atol=1e-5)


def test_the_repaired_encoder_decoder_splits_into_parts_that_match_pytorch(exported, tmp_path):
    case, path = exported("encoder-decoder", True)
    repaired = tmp_path / "repaired.onnx"
    graphfix.repair(path, output=repaired)
    model = onnx.load(repaired)
    # the encoder's output: the last node under /enc/ that feeds the decoder
    memory = next(o for n in reversed(model.graph.node) if n.name.startswith("/enc/") for o in n.output)
    encoder, decoder = tmp_path / "encoder.onnx", tmp_path / "decoder.onnx"
    for args in ([str(repaired), "--inputs", "memory", "--outputs", memory, "-o", str(encoder)],
                 [str(repaired), "--inputs", f"x,{memory}", "--outputs", "output", "-o", str(decoder)]):
        outcome = CliRunner().invoke(cli, ["extract", *args])
        assert outcome.exit_code == 0, outcome.output
    import torch

    for batch, time in SIZES:
        feeds = case.inputs(batch, time)
        with torch.no_grad():
            enc = case.module.enc(torch.from_numpy(feeds["memory"]))
            dec = case.module.dec(torch.from_numpy(feeds["x"]), enc)
        got_enc = run(encoder, {"memory": feeds["memory"]})
        np.testing.assert_allclose(got_enc, enc.numpy(), rtol=1e-4, atol=1e-5)
        got_dec = run(decoder, {"x": feeds["x"], memory: enc.numpy()})
        np.testing.assert_allclose(got_dec, dec.numpy(), rtol=1e-4, atol=1e-5)


def test_graphfix_export_repairs_the_layer_given_the_module(tmp_path):
    import torch

    case = attention("encoder", False)
    example = tuple(torch.from_numpy(v) for v in case.inputs(*case.export_size).values())
    path = tmp_path / "encoder.onnx"
    report = graphfix.export(case.module, example, path, input_names=list(case.input_names),
                             output_names=["output"], dynamic_axes={**case.axes, "output": case.output_axes},
                             opset_version=17)
    assert report.status == "repaired", report.error
    for batch, time in SIZES:
        feeds = case.inputs(batch, time)
        np.testing.assert_allclose(run(path, feeds), case.torch_output(feeds), rtol=1e-4, atol=1e-5)
