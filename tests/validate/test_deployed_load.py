"""A model onnxruntime runs with its graph optimizations off but cannot load in a default (optimized) session
(helper 82): timm's EVA with rotary positions, exported with TorchScript and dynamic sizes, fails in a default
session ("Can't merge shape info" at a Concat), while the probe's sessions, optimizations off, ran it; `diagnose`
never said so. Now the probe loads the model once as a default session would, and reports what stops it."""

from __future__ import annotations

import warnings

import onnxruntime as ort
import pytest

import graphfix

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]


class Features(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


def _session(path, level):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_a_model_a_default_session_cannot_load_is_reported(tmp_path):
    from fixtures.library_models import import_timm

    import_timm()
    from timm.models.eva import Eva

    torch.manual_seed(0)
    model = Eva(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, num_classes=0, use_rot_pos_emb=True,
                dynamic_img_size=True, use_abs_pos_emb=False, ref_feat_shape=(4, 4))
    model = Features(model).eval()
    path = tmp_path / "eva.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, 64, 96),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["out"], dynamic_axes={"x": {0: "B", 2: "H", 3: "W"}})
    _session(path, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)  # the trap: it loads with optimizations off
    with pytest.raises(Exception, match="Concat"):
        _session(path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)  # and not as a default session
    found = [f for f in graphfix.diagnose(path) if f.rule == "GF000" and "default session" in f.message]
    assert len(found) == 1 and found[0].severity.value == "error", graphfix.diagnose(path)
    assert "Concat" in found[0].message
