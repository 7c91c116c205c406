"""Deep healthy vision transformers from torchvision get no error and `repair` exits 0 (helper 62, #22).

The static bound on what onnxruntime's data propagation holds while it loads a model (graphfix.io.propagation) took
a Shape for as wide as its input, the two slices of a shape that torch's unflatten concatenates (`shape[:2]`,
`shape[3:]`, bounds computed by Mod and Add of constants) for the whole shape each, and an Einsum for the sum of
its inputs' ranks: the bound doubled with every layer, and a 12-layer ViT and a MaxViT got "GF000 probe-skipped:
a node would hold more than 1,048,576 shape values" (exit 1) while onnxruntime runs them exactly. torchvision's
own classes, small configs, random weights, TorchScript export with a dynamic batch, as `vit_b_16` and `maxvit_t`
are exported.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
from conftest import assert_left_alone

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]


def vision_transformer():
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=16, num_layers=24, num_heads=2, hidden_dim=16, mlp_dim=32,
                             num_classes=5), 32


def maxvit():
    from torchvision.models.maxvit import MaxVit

    return MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16], block_layers=[2, 2],
                  head_dim=4, stochastic_depth_prob=0.0, num_classes=5), 32


@pytest.mark.parametrize("build", [vision_transformer, maxvit], ids=lambda b: b.__name__)
def test_a_deep_torchvision_transformer_is_run_and_passes(build, tmp_path):
    from fixtures.torchvision_models import register_ops

    register_ops()
    torch.manual_seed(0)
    module, side = build()
    module.eval()
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 3, side, side),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "B"}, "logits": {0: "B"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # the export is right: what graphfix is asked to leave alone
        image = torch.randn(batch, 3, side, side)
        with torch.no_grad():
            expected = module(image).numpy()
        np.testing.assert_allclose(session.run(None, {"image": image.numpy()})[0], expected, rtol=1e-4, atol=1e-5)
    assert_left_alone(path, tmp_path / "out.onnx")
