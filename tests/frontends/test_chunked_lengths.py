"""Lengths a Reshape splits into whole chunks (#22, probes inside the model's domain).

`nn.PixelUnshuffle(2)` takes even heights and widths only, in PyTorch too, and a frame-stacking front end
(`x.reshape(B, -1, 8 * C)` before a Linear of 8 * C features) takes multiples of 8 frames. Exported with dynamo as
`2 * H` (a dim torch.export names `2*H2`), the exporter checked the model at even sizes only: graphfix probes those
(graphfix.analysis.sizes.domain.input_steps), finds no error, and `repair` writes it unchanged with exit 0.

Exported with the TorchScript exporter, such a split is not taken for the model's domain: a first version did,
from the chunk's size (4 or less, or a size a weight has), and red team 79 had wrong models pass through it with
exit 0, all of which the graph cannot tell from a healthy split: a head split with the length baked
(`q.reshape(B, int(T), H, -1)`: the split's -1 takes 64 T / 96 values, so it runs at multiples of 3 with the heads
mixed up), a chunk of the length baked, a pad to a multiple that the trace dropped with its branch
(`if T % 8: x = F.pad(...)`, PyTorch runs at 43 frames). So a size that is no multiple is still probed, the healthy
split is an error too, and its hint says to give multiples with `--shape` where the model takes no others: with
that, it is left alone and matches PyTorch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from graphfix.cli import cli  # noqa: E402

pytestmark = pytest.mark.torch


class Unshuffled(torch.nn.Module):
    """torch.nn's PixelUnshuffle(2) before a 3x3 Conv (a space-to-depth stem)."""

    def __init__(self):
        super().__init__()
        self.unshuffle, self.conv = torch.nn.PixelUnshuffle(2), torch.nn.Conv2d(12, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(self.unshuffle(x))


class Stacked(torch.nn.Module):
    """Frame stacking: 8 frames of 4 features into one of 32, read by a Linear."""

    def __init__(self, stack: int = 8, features: int = 4):
        super().__init__()
        self.stack, self.linear = stack, torch.nn.Linear(stack * features, 6)

    def forward(self, x):
        return self.linear(x.reshape(x.shape[0], -1, self.stack * x.shape[2]))


class PaddedInABranch(Stacked):
    """A trap: frames padded to a whole stack in a branch the trace drops at a multiple (PyTorch runs at 43)."""

    def forward(self, x):
        if x.shape[1] % self.stack:
            x = torch.nn.functional.pad(x, (0, 0, 0, self.stack - x.shape[1] % self.stack))
        return super().forward(x)


class BakedHeads(torch.nn.Module):
    """A trap (red team 79): attention whose head split bakes the length and merges back with -1."""

    def __init__(self, width: int = 64, heads: int = 4):
        super().__init__()
        self.heads, self.qkv, self.out = heads, torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).chunk(3, -1)

        def split(h):
            return h.reshape(b, int(t), self.heads, -1).transpose(1, 2)

        a = torch.softmax(split(q) @ split(k).transpose(-1, -2) / 4.0, -1) @ split(v)
        return self.out(a.transpose(1, 2).reshape(b, -1, d))


class BakedChunk(torch.nn.Module):
    """A trap: the length itself as the chunk (`int(T)` is a constant in the TorchScript export), or its half."""

    def __init__(self, half: bool = False):
        super().__init__()
        self.half = half

    def forward(self, x):
        t = int(x.shape[1])
        chunk = (t // 2 if self.half else t) * x.shape[2]
        return torch.softmax(x.reshape(x.shape[0], -1, chunk), -1) * 2


def export(module, example, path, dynamo=False, axes=None):
    module.eval()
    if dynamo:
        from torch.export import Dim

        h, w = Dim("h", min=1, max=256), Dim("w", min=1, max=256)
        torch.onnx.export(module, (example,), str(path), dynamo=True, input_names=["x"],
                          dynamic_shapes={"x": {2: 2 * h, 3: 2 * w}})
    else:
        torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": axes, "y": {0: "B", 1: "U"} if len(axes) == 2 else {0: "B"}})
    return path


def graphfix(*args) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, [*args, "--format", "json"])
    return result.exit_code, json.loads(result.output)


def errors(report: dict) -> list[str]:
    return [f["rule"] for f in report["models"][0]["findings"] if f["severity"] == "error"]


def matches(module, path, shapes) -> None:
    """The written model runs and matches PyTorch at each shape."""
    for shape in shapes:
        x = torch.randn(*shape)
        with torch.no_grad():
            want = module(x).numpy()
        (got,) = run(str(path), {"x": x.numpy()})
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=str(shape))


def test_a_dim_torch_export_declares_a_multiple_is_probed_at_multiples(tmp_path):
    torch.manual_seed(0)
    module = Unshuffled().eval()
    path = export(module, torch.randn(1, 3, 32, 48), tmp_path / "m.onnx", dynamo=True)
    code, report = graphfix("diagnose", str(path))
    assert (code, report["models"][0]["findings"]) == (0, []), report
    out = tmp_path / "fixed.onnx"
    code, report = graphfix("repair", str(path), "-o", str(out))
    assert code == 0 and report["models"][0]["validation"]["passed"], report
    assert all(size % 2 == 0 for sizes in report["models"][0]["validation"]["sizes"] for size in sizes.values())
    matches(module, out, [(1, 3, 32, 48), (1, 3, 10, 14), (1, 3, 64, 30)])


HEALTHY = {  # name -> (module, export shape, dynamic axes, a shape at multiples for --shape, sizes checked)
    "pixel-unshuffle": (Unshuffled, (1, 3, 32, 48), {0: "B", 2: "H", 3: "W"}, "x=1x3x20x28",
                        [(1, 3, 10, 14), (3, 3, 64, 30)]),
    "frame-stacking": (Stacked, (2, 40, 4), {0: "B", 1: "T"}, "x=1x24x4", [(1, 16, 4), (3, 96, 4)]),
}


@pytest.mark.parametrize("name", HEALTHY)
def test_a_split_the_trace_leaves_ambiguous_is_an_error_whose_hint_gives_multiples(name, tmp_path):
    make, shape, axes, multiples, sizes = HEALTHY[name]
    torch.manual_seed(0)
    module = make().eval()
    path = export(module, torch.randn(*shape), tmp_path / "m.onnx", axes=axes)
    code, report = graphfix("diagnose", str(path))
    assert code == 1 and "GF004" in errors(report), report
    assert all("give such sizes with --shape" in f["hint"] for f in report["models"][0]["findings"]
               if f["rule"] == "GF004"), report
    code, report = graphfix("diagnose", str(path), "--shape", multiples)
    assert (code, errors(report)) == (0, []), report
    out = tmp_path / "fixed.onnx"
    code, report = graphfix("repair", str(path), "-o", str(out), "--shape", multiples)
    assert code == 0 and report["models"][0]["status"] == "unchanged", report
    matches(module, out, [shape, *sizes])


TRAPS = {  # name -> (module, export shape, a shape PyTorch runs at and the export gets wrong)
    "baked-heads": (BakedHeads, (2, 24, 64), (1, 18, 64)),
    "padded-in-a-dropped-branch": (PaddedInABranch, (2, 40, 4), (1, 43, 4)),
    "baked-chunk": (lambda: BakedChunk(), (2, 24, 2), (1, 48, 2)),
    "baked-half-chunk": (lambda: BakedChunk(half=True), (2, 16, 2), (1, 24, 2)),
}


@pytest.mark.parametrize("name", TRAPS)
def test_a_split_that_is_wrong_at_other_sizes_is_an_error_and_fails_its_proof(name, tmp_path):
    make, shape, other = TRAPS[name]
    torch.manual_seed(0)
    module = make().eval()
    path = export(module, torch.randn(*shape), tmp_path / "m.onnx", axes={0: "B", 1: "T"})
    x = torch.randn(*other)
    with torch.no_grad():
        want = module(x).numpy()
    try:
        (got,) = run(str(path), {"x": x.numpy()})
        wrong = got.shape != want.shape or not np.allclose(got, want, atol=1e-4)
    except Exception:  # onnxruntime refuses a size PyTorch runs at
        wrong = True
    assert wrong
    code, report = graphfix("diagnose", str(path))
    assert code == 1 and "GF004" in errors(report), report
    code, report = graphfix("repair", str(path), "-o", str(tmp_path / "fixed.onnx"))
    assert code == 1 and not report["models"][0]["validation"]["passed"], report


class Quartered(torch.nn.Module):
    """Frames stacked by four with the count computed from the shape, `x.reshape(B, T // 4, 4 * D)` (helper 126)."""

    def forward(self, x):
        b, t, d = x.shape
        return x.reshape(b, t // 4, 4 * d).relu()


def test_a_split_computed_from_the_shape_fails_off_its_step_as_gf000_whose_hint_gives_multiples(tmp_path):
    """Its element count `8*B*T = 32*B*floor(T/4)` holds at multiples of 4 whatever the batch: the probe's T = 7
    fails at that Reshape, which no constant causes (it was called a baked shape, GF004, with a hint about
    baked constants). Still an error, as for a split by -1: a pad the trace dropped leaves the same graph."""
    module = Quartered().eval()
    path = export(module, torch.randn(2, 16, 8), tmp_path / "m.onnx", axes={0: "B", 1: "T"})
    code, report = graphfix("diagnose", str(path))
    (finding,) = [f for f in report["models"][0]["findings"] if f["severity"] == "error"]
    assert code == 1 and finding["rule"] == "GF000" and "multiples of 4 of T" in finding["hint"], report
    code, report = graphfix("diagnose", str(path), "--shape", "x=1x8x8")
    assert (code, errors(report)) == (0, []), report
    out = tmp_path / "fixed.onnx"
    code, report = graphfix("repair", str(path), "-o", str(out), "--shape", "x=1x8x8")
    assert code == 0 and report["models"][0]["status"] == "unchanged", report
    matches(module, out, [(1, 8, 8), (3, 36, 8)])
