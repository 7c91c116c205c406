"""GF011 on adaptive pools that torch.export wrote as fixed pools along a dynamic axis (helper 77). torch.nn's
`AdaptiveAvgPool1d(8)` after a Conv1d, exported with dynamo at 40 frames, is an AveragePool of kernel 5 whose
output has `T // 5` positions; `AdaptiveMaxPool2d((4, 4))` at 32 by 40 a MaxPool of kernel (8, 10). Both ran at
every size, `diagnose` found nothing and `repair` wrote them unchanged with exit 0, "passed", though they differ
from PyTorch at every other size (the tests show it with onnxruntime). Now an error with no fix: `repair` refuses
and writes nothing. Controls: an adaptive pool to 1 (torch.export writes a mean, right at every size) and one
along a static axis."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import run

import graphfix

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch]
nn = torch.nn


def findings(path):
    return [f for f in graphfix.diagnose(str(path), static=True) if f.rule == "GF011"]


def export(module, example, path, dims):
    """As users call the dynamo exporter: `dynamic_axes` naming the dims that vary."""
    torch.onnx.export(module.eval(), (example,), str(path), dynamo=True, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": dims})
    return path


def pooled_1d(size):
    return nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.AdaptiveAvgPool1d(size))


def pooled_max_2d(size):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveMaxPool2d(size))


def _timm_pool(kind: str) -> nn.Module:
    from fixtures.library_models import import_timm

    pool = import_timm().layers.SelectAdaptivePool2d(output_size=2, pool_type=kind, flatten=True)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), pool)


class Called(nn.Module):
    """The functional call, as timm's SelectAdaptivePool2d('avgmax') makes it: no pooling module in the path."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        return nn.functional.adaptive_avg_pool1d(self.conv(x), 8)


class Subclassed(nn.AdaptiveAvgPool1d):
    """A subclass: the module path names it, not torch.nn's class."""


class Cropped(nn.Module):
    """Padded and cropped to 16 before the pool: its input is 16 long at every size (helper 81)."""

    def __init__(self):
        super().__init__()
        self.conv, self.pool = nn.Conv1d(4, 4, 3, padding=1), nn.AdaptiveAvgPool1d(4)

    def forward(self, x):
        return self.pool(nn.functional.pad(self.conv(x), (0, 16))[..., :16])


BROKEN = {  # name -> (module, export input, dynamic dims, an input at another size)
    "avg-1d": (lambda: pooled_1d(8), (2, 4, 40), {0: "b", 2: "t"}, (1, 4, 48)),
    "max-2d": (lambda: pooled_max_2d((4, 4)), (2, 3, 32, 40), {0: "b", 2: "h", 3: "w"}, (1, 3, 64, 47)),
    # helper 81: no torch.nn pooling class in the module path; the stack trace's innermost call names it
    "functional": (Called, (2, 4, 40), {0: "b", 2: "t"}, (1, 4, 48)),
    "subclass": (lambda: nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), Subclassed(8)), (2, 4, 40), {0: "b", 2: "t"},
                 (1, 4, 48)),
    # timm's SelectAdaptivePool2d('avgmax'): its frame calls timm's adaptive_avgmax_pool2d (helper 81)
    "timm-avgmax": (lambda: _timm_pool("avgmax"), (2, 3, 32, 32), {0: "b", 2: "h", 3: "w"}, (1, 3, 48, 40)),
    # exported where the length was the output size: kernel 1, which a 1-d pool never keeps (helper 81)
    "avg-1d-at-its-size": (lambda: pooled_1d(8), (2, 4, 8), {0: "b", 2: "t"}, (1, 4, 48)),
}


@pytest.mark.parametrize("name", BROKEN)
def test_an_adaptive_pool_fixed_at_the_export_size_is_an_error_and_not_written(name, tmp_path):
    make, shape, dims, other = BROKEN[name]
    torch.manual_seed(0)
    module = make().eval()
    path = export(module, torch.randn(*shape), tmp_path / "m.onnx", dims)
    x = torch.randn(*other)
    (got,) = run(str(path), {"x": x.numpy()})
    assert got.shape != tuple(module(x).shape)  # the export is wrong there: onnxruntime against PyTorch
    found = findings(path)
    assert found and all(f.severity.value == "error" and f.fix is None for f in found), found  # avgmax: both
    assert "the exporter fixed the pool at the export size" in found[0].message
    out = tmp_path / "fixed.onnx"
    done = subprocess.run([sys.executable, "-m", "graphfix", "repair", str(path), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "GF011" in done.stdout and not out.exists(), done.stdout + done.stderr


@pytest.mark.parametrize(("make", "shape", "dims", "other"), [
    (lambda: pooled_1d(1), (2, 4, 40), {0: "b", 2: "t"}, (1, 4, 48)),  # a mean at every size
    (lambda: pooled_1d(8), (2, 4, 40), {0: "b"}, (3, 4, 40)),  # the pooled axis is static
    (lambda: pooled_max_2d(1), (2, 3, 32, 40), {0: "b", 2: "h", 3: "w"}, (1, 3, 50, 37)),  # a max at every size
    (Cropped, (2, 4, 40), {0: "b", 2: "t"}, (1, 4, 23)),  # 16 long at every size: onnx's inference leaves it open
], ids=["to-one", "static-axis", "max-to-one", "cropped-to-16"])
def test_an_adaptive_pool_right_at_every_size_is_not_reported(make, shape, dims, other, tmp_path):
    torch.manual_seed(0)
    module = make().eval()
    path = export(module, torch.randn(*shape), tmp_path / "m.onnx", dims)
    x = torch.randn(*other)
    (got,) = run(str(path), {"x": x.numpy()})
    np.testing.assert_allclose(got, module(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert findings(path) == []
