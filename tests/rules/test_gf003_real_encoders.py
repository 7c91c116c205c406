"""GF003 on `h = encoder(...).last_hidden_state; h[pad] = 0` with transformers BERT, HuBERT and wav2vec2.

The TorchScript exporter writes `Where(pad[B, T], 0, h[B, T, C])`, which onnxruntime aligns from the right and
cannot run. onnx cannot name the hidden states' dims; the size analysis can (BERT's 512-row position table bounds
the length, so `Min(512, T)` is `T`; the audio models' frames are the conv front end's output length, equal to the
declared output dim). The fix must be found statically, SAFE, applied by default, and match PyTorch at 3 sizes.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import graphfix
from graphfix.core.rule import Safety

pytest.importorskip("torch")
pytest.importorskip("transformers")
from fixtures.torch_models import PAD_MODELS, PAD_SIZES, padded_encoder

pytestmark = [pytest.mark.torch, pytest.mark.slow]


@pytest.mark.parametrize("name", PAD_MODELS)
def test_mask_assignment_after_a_real_encoder_is_repaired_by_default(tmp_path, capfd, name):
    case = padded_encoder(name)
    path = tmp_path / f"{name}.onnx"
    case.export(path)
    capfd.readouterr()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="broadcast"):
        session.run(None, case.inputs(*PAD_SIZES[name][1]))  # broken even at the export size

    findings = [f for f in graphfix.diagnose(path, static=True) if f.severity.value == "error"]
    assert [f.rule for f in findings] == ["GF003"]
    assert findings[0].fix is not None and findings[0].fix.safety is Safety.SAFE
    assert "leading dims" in findings[0].message

    result = graphfix.repair(path)
    assert result.status == "repaired", result.error
    for batch, time in PAD_SIZES[name]:
        feeds = case.inputs(batch, time)
        got = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, feeds)[0]
        np.testing.assert_allclose(got, case.torch_output(feeds), rtol=1e-4, atol=1e-4)
    streams = capfd.readouterr()
    assert "unsupported broadcast" not in streams.out + streams.err  # no debugging line leaks to the terminal


def test_graphfix_export_repairs_the_mask_given_the_module(tmp_path):
    import torch

    case = padded_encoder("bert")
    example = tuple(torch.from_numpy(v) for v in case.inputs(*case.export_size).values())
    path = tmp_path / "bert.onnx"
    report = graphfix.export(case.module, example, path, input_names=list(case.input_names),
                             output_names=["output"], dynamic_axes={**case.axes, "output": case.output_axes},
                             opset_version=17)
    assert report.status == "repaired", report.error
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, time in PAD_SIZES["bert"]:
        feeds = case.inputs(batch, time)
        np.testing.assert_allclose(session.run(None, feeds)[0], case.torch_output(feeds), rtol=1e-4, atol=1e-4)


def test_funnel_relative_positions_baked_at_the_export_length_are_a_static_error(tmp_path):
    """FunnelModel's relative positions are arange(L, -L, -1) of the export length L, folded to a constant:
    attention then runs only up to 2L - 1 tokens. The static analysis proves that cap and names the constant and
    the export length (GF004, error); GF003 leaves the capped broadcast to it."""
    from fixtures.torch_models import funnel

    case = funnel()
    path = tmp_path / "funnel.onnx"
    case.export(path)
    length = case.export_size[1]
    findings = [f for f in graphfix.diagnose(path, static=True) if f.severity.value == "error"]
    assert findings and all(f.rule == "GF006" for f in findings), [f.message for f in findings]
    assert any(f"<= {2 * length - 1}" in f.message and f"={length} " in f.message for f in findings)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="broadcast"):
        session.run(None, case.inputs(1, 2 * length + 1))  # the cap is real: onnxruntime fails past it
