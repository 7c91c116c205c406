"""GF007 on a slice cut at a length computed in Python while tracing, at the export length itself (red team h77:
speechbrain's Xvector, whose StatisticsPooling slices `x[i, 0:int(round(lens[i] * T))]`, exported at batch 1 and
relative length 1.0). The cut is a no-op at the export length and truncates every longer input without an error,
so no constraint breaks and no probe fails: only the export length shows it. Known (--trace-shape), the cut is an
error that says the graph cannot tell it from a model that keeps that many frames on purpose, and nothing is
repaired; unknown, it is an info. A model whose own cut is not its export length is quiet."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest

import graphfix

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

FEATURES = 12


class RelativeLengthPool(torch.nn.Module):
    """Mean over the frames a relative length keeps, the length through Python (speechbrain's spelling)."""

    def forward(self, x, lens):
        return x[:, : int(torch.round(lens[0] * x.shape[1]))].mean(1)


class Onset(torch.nn.Module):
    """Healthy: scores the first 16 frames only (an onset detector's window), whatever the length."""

    def forward(self, x, lens):
        return x[:, :16].mean(1) * lens[0]


def _xvector():
    from fixtures.library_models import import_torchaudio

    pytest.importorskip("speechbrain")
    import_torchaudio()
    from speechbrain.lobes.models.Xvector import Xvector

    class Embedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = Xvector(device="cpu", tdnn_blocks=3, tdnn_channels=[16, 16, 24], tdnn_kernel_sizes=[5, 3, 1],
                             tdnn_dilations=[1, 2, 1], lin_neurons=8, in_channels=FEATURES)

        def forward(self, x, lens):
            return self.m(x, lens)

    torch.manual_seed(0)
    return Embedding().eval()


def feats(time: int) -> np.ndarray:
    rng = np.random.default_rng(time)
    return (rng.standard_normal((1, time, FEATURES)) + np.linspace(0, 4, time)[None, :, None]).astype(np.float32)


def export(module, path, time: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(feats(time)), torch.ones(1)), str(path), dynamo=False,
                          opset_version=17, input_names=["feats", "lens"], output_names=["emb"],
                          dynamic_axes={"feats": {1: "t"}})


def run(path, x) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"feats": x, "lens": np.ones(1, np.float32)}
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]


def expected(module, x) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x), torch.ones(1)).numpy()


def errors(path, **kwargs):
    return [f for f in graphfix.diagnose(path, static=True, **kwargs) if f.severity.value == "error"]


@pytest.mark.parametrize("build", [RelativeLengthPool, _xvector], ids=["relative-length-pool", "speechbrain-xvector"])
def test_a_cut_at_the_export_length_is_an_error_once_the_length_is_known(tmp_path, build):
    module, path = build().eval(), tmp_path / "pool.onnx"
    export(module, path, 50)
    # speechbrain's pooling adds noise of 1e-5 to its statistics (a RandomNormalLike in the graph): atol above it
    x = feats(64)
    assert not np.allclose(run(path, x), expected(module, x), rtol=1e-3, atol=1e-3)  # silently wrong past 50
    np.testing.assert_allclose(run(path, feats(50)), expected(module, feats(50)), rtol=1e-3, atol=5e-4)

    found = errors(path, trace_shapes={"feats": (1, 50, FEATURES)})
    assert [f.rule for f in found] == ["GF007"], [f.message for f in found]
    assert "at the constant 50, its length at export" in found[0].message
    assert "cannot say which" in found[0].message and found[0].fix is None

    unknown = [f for f in graphfix.diagnose(path, static=True) if f.rule == "GF007"]
    assert [f.severity.value for f in unknown] == ["info"]  # the same graph as a model's own cut at 50
    assert "if it was 50" in unknown[0].message

    result = graphfix.repair(path, trace_shapes={"feats": (1, 50, FEATURES)})
    assert result.status != "repaired" and "GF007" in (result.error or ""), result.error


def test_a_models_own_cut_away_from_the_export_length_is_quiet(tmp_path):
    module, path = Onset().eval(), tmp_path / "onset.onnx"
    export(module, path, 50)
    for time in (20, 50, 64):
        np.testing.assert_allclose(run(path, feats(time)), expected(module, feats(time)), rtol=1e-5, atol=1e-6)
    assert not errors(path, trace_shapes={"feats": (1, 50, FEATURES)})
    assert not errors(path)
    assert graphfix.repair(path, trace_shapes={"feats": (1, 50, FEATURES)}).status == "unchanged"


def test_a_models_own_cut_exported_at_that_length_is_an_error_that_says_it_is_ambiguous(tmp_path):
    module, path = Onset().eval(), tmp_path / "onset16.onnx"
    export(module, path, 16)
    found = errors(path, trace_shapes={"feats": (1, 16, FEATURES)})
    assert [f.rule for f in found] == ["GF007"] and found[0].fix is None
    assert "keeps its first 16 on purpose" in found[0].message
