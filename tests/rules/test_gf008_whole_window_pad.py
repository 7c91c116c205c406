"""GF008's warning on a Pad by `k - x % k` (a sweep of real front ends, helper 34): transformers' FocalNet pads a
patch merge under `if width % p != 0`, and the TorchScript exporter keeps the branch taken at export with its
amount `p - width % p`, which pads a whole p where the width is a multiple: 9 tokens become 16 at 48 x 48, and
`diagnose` said nothing. The same amount written `(p - width % p) % p` (transformers' Swin) is healthy and gets
nothing. Not repaired: a model that always pads leaves the same graph, and the original runs at every size."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import run

import graphfix

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch]


def gf008(path):
    return [f for f in graphfix.diagnose(str(path), static=True) if f.rule == "GF008"]


def export(module, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, 3, 40, 56),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b", 1: "n"}})
    return path


def test_focalnet_padding_a_whole_window_where_the_width_is_a_multiple_is_a_warning(tmp_path):
    from fixtures.library_models import PixelOutput, import_transformers

    tf = import_transformers()
    torch.manual_seed(0)
    module = PixelOutput(tf.FocalNetModel(tf.FocalNetConfig(
        image_size=40, patch_size=4, embed_dim=16, depths=[1, 1, 1], focal_levels=[2, 2, 2],
        focal_windows=[3, 3, 3]))).eval()
    path = export(module, tmp_path / "focalnet.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 48)).astype(np.float32)
    with torch.no_grad():  # the trap: the export runs at 48 x 48, with a whole window of padding too many
        assert run(str(path), {"x": x})[0].shape[1] == 16 and module(torch.from_numpy(x)).shape[1] == 9
    found = gf008(path)
    assert found and all(f.severity.value == "warning" and f.fix is None for f in found), found
    assert any("2 - floor(w/8) % 2" in f.message and "a whole 2" in f.message for f in found), found


@pytest.mark.parametrize("outer_mod", [True, False])
def test_only_an_amount_that_pads_a_whole_window_is_noted(tmp_path, outer_mod):
    class Windows(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)

        def forward(self, x):
            h = self.conv(x)
            pad = (3 - h.shape[3] % 3) % 3 if outer_mod else 3 - h.shape[3] % 3
            return torch.nn.functional.pad(h, (0, pad)).flatten(2).transpose(1, 2)

    found = gf008(export(Windows(), tmp_path / "windows.onnx"))
    assert [f.severity.value for f in found] == ([] if outer_mod else ["warning"]), found


def test_an_amount_is_never_parsed_as_text(tmp_path):
    """The amounts are the size analysis' expressions; text among them (a dim name is model text) is refused by
    sympy's strict conversion, never run."""
    import importlib

    from graphfix.core.registry import find_rule

    _whole_window = importlib.import_module(find_rule("GF008").__module__)._whole_window  # wherever it is installed
    marker = tmp_path / "ran"
    assert _whole_window(f"__import__('pathlib').Path({str(marker)!r}).touch()") is None
    assert not marker.exists()
