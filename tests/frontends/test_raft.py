"""Sizes off a step the graph's shapes need: torchvision's RAFT takes multiples of 8 only (#22).

RAFT computes `h // 8` from the image's shape for its grid of coordinates and meets it with the features three
stride-2 Convs make of the image (ceil(H / 8)): the two agree only at multiples of 8, and PyTorch refuses other sizes
(RAFT raises; TorchScript drops the check). A model that pads to a multiple of 8 in a branch the trace drops
(`if H % 8: x = F.pad(...)`) runs in PyTorch at every size and leaves the same graph, node for node: so the step is
not taken for the model's domain (a wrong model would pass unprobed), the sizes off it are still probed and fail,
and the failure is GF000's (no constant is involved: not a baked repeat count nor a baked shape), with a hint that
names the step and the `--shape` to give. With those sizes, RAFT is left alone and matches PyTorch.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
from conftest import run

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from graphfix.cli import cli  # noqa: E402

pytestmark = pytest.mark.torch
F = torch.nn.functional


class Flowish(torch.nn.Module):
    """RAFT's shape logic in small: features at 1/8 by three stride-2 Convs, a grid of coordinates at `h // 8`
    beside them, the flow upsampled by 8. Like RAFT, it refuses sizes that are no multiple of 8."""

    def __init__(self):
        super().__init__()
        conv = torch.nn.Conv2d
        self.encoder = torch.nn.Sequential(conv(3, 6, 7, 2, 3), torch.nn.ReLU(), conv(6, 6, 3, 2, 1), torch.nn.ReLU(),
                                           conv(6, 6, 3, 2, 1))
        self.head = conv(8, 2, 3, padding=1)

    def prepare(self, x):
        if x.shape[2] % 8 or x.shape[3] % 8:
            raise ValueError("H and W must be multiples of 8")
        return x

    def forward(self, x):
        x = self.prepare(x)
        b, _, h, w = x.shape
        ys, xs = torch.meshgrid(torch.arange(h // 8), torch.arange(w // 8), indexing="ij")
        coords = torch.stack([xs, ys]).float()[None].repeat(b, 1, 1, 1)
        flow = self.head(torch.cat([self.encoder(x), coords], 1))
        return 8 * F.interpolate(flow, size=(8 * (h // 8), 8 * (w // 8)), mode="bilinear", align_corners=True)


class PaddedFlowish(Flowish):
    """A trap: the image padded to a multiple of 8 in a branch the trace drops at a multiple (PyTorch runs at 34)."""

    def prepare(self, x):
        if x.shape[2] % 8 or x.shape[3] % 8:
            x = F.pad(x, (0, -x.shape[3] % 8, 0, -x.shape[2] % 8))
        return x


class Shortcut(torch.nn.Module):
    """timm's MaxViT block in small: a stride-2 Conv (ceil of half) beside an AvgPool shortcut (floor of half),
    added after a stride-2 stem; the two agree where the stem's output is even, h and w 4 n or 4 n + 3, and
    PyTorch fails elsewhere too (helper 92)."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.Conv2d(8, 8, 3, 2, 1)
        self.pool = torch.nn.AvgPool2d(2)

    def forward(self, x):
        x = self.stem(x)
        return self.conv(x) + self.pool(x)


def export(module, example: tuple, path, names=("x",)):
    axes = {name: {0: "B", 2: "H", 3: "W"} for name in (*names, "y")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of the branch on the size
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, opset_version=17,
                          input_names=list(names), output_names=["y"], dynamic_axes=axes)
    return path


def graphfix(*args) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, [*args, "--format", "json"])
    return result.exit_code, json.loads(result.output)


def errors(report: dict) -> list[dict]:
    return [f for f in report["models"][0]["findings"] if f["severity"] == "error"]


def off_the_step(code: int, report: dict) -> list[dict]:
    """The errors of a model probed off its step: GF000's, each hint naming the step (how many the probe finds
    downstream of the first depends on the sizes it anchors at, and those on how fast the runs are)."""
    found = errors(report)
    assert code == 1 and found and {f["rule"] for f in found} == {"GF000"}, report
    assert all("agree only at multiples of 8 of H and W" in f["hint"] for f in found), report
    return found


def given_shapes(hint: str) -> list[str]:
    """The `--shape NAME=AxBxC` arguments the hint proposes, as CLI arguments."""
    return [arg for name, dims in re.findall(r"--shape ([\w.:/-]+)=(\d+(?:x\d+)*)", hint)
            for arg in ("--shape", f"{name}={dims}")]


def shape_of_graph(path) -> tuple[list[str], list[list[int]]]:
    """Its ops in order, and the integer constants they read in order: the graph without names."""
    import onnx

    model = onnx.load(str(path))
    constants = [onnx.numpy_helper.to_array(a.t).reshape(-1).tolist() for n in model.graph.node
                 for a in n.attribute if n.op_type == "Constant" and a.t.data_type == onnx.TensorProto.INT64]
    return [n.op_type for n in model.graph.node], constants


def outputs(module, path, shape, names=("x",)):
    """PyTorch's output (None where it raises) and onnxruntime's (None where it fails) at `shape`."""
    feeds = {name: torch.randn(*shape) for name in names}
    try:
        with torch.no_grad():
            want = module(*feeds.values())
        want = (want[-1] if isinstance(want, list) else want).numpy()
    except ValueError:
        want = None
    try:
        (got,) = run(str(path), {name: value.numpy() for name, value in feeds.items()})
    except Exception:  # onnxruntime refuses the size
        got = None
    return want, got


def written_unchanged(module, path, shapes: list[str], compared, tmp_path, names=("x",)) -> None:
    """`repair` at the `--shape`s given leaves the model unchanged, and it matches PyTorch at each size compared."""
    out = tmp_path / "fixed.onnx"
    code, report = graphfix("repair", str(path), "-o", str(out), *shapes)
    assert code == 0 and report["models"][0]["status"] == "unchanged", report
    for shape in compared:
        want, got = outputs(module, out, shape, names)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=str(shape))


def test_the_healthy_and_the_padded_design_leave_one_graph(tmp_path):
    torch.manual_seed(0)
    healthy, padded = Flowish().eval(), PaddedFlowish().eval()
    padded.load_state_dict(healthy.state_dict())
    example = (torch.randn(1, 3, 32, 48),)
    paths = [export(module, example, tmp_path / f"{i}.onnx") for i, module in enumerate((healthy, padded))]
    assert shape_of_graph(paths[0]) == shape_of_graph(paths[1])
    want, got = outputs(healthy, paths[0], (1, 3, 34, 44))
    assert (want, got) == (None, None)  # PyTorch refuses it, and so does onnxruntime
    want, got = outputs(padded, paths[1], (1, 3, 34, 44))
    assert want is not None and got is None  # PyTorch pads and runs: the export is wrong there


def diagnosed(module, tmp_path) -> tuple:
    """Its export's path and the `--shape` arguments the hint of its one error gives: GF000 at the Concat where
    the grid at `h // 8` meets the features."""
    path = export(module, (torch.randn(1, 3, 32, 48),), tmp_path / "m.onnx")
    code, report = graphfix("diagnose", str(path))
    found = off_the_step(code, report)
    assert found[0]["nodes"] == ["/Concat_6"], report
    shapes = given_shapes(found[0]["hint"])
    assert len(shapes) == 2 and all(int(d) % 8 == 0 for d in shapes[1].split("=")[1].split("x")[2:]), shapes
    code, report = graphfix("repair", str(path), "-o", str(tmp_path / "unprobed.onnx"))
    assert code == 1 and not report["models"][0]["validation"]["passed"], report
    note = next(n for n in report["models"][0]["notes"] if n.startswith("unchanged model fails"))
    assert "agree only at multiples of 8 of H and W" in note and "--shape" in note, note  # repair says it too
    return path, shapes


def test_a_size_off_the_graphs_step_is_an_error_whose_hint_gives_sizes_on_it(tmp_path):
    torch.manual_seed(0)
    module = Flowish().eval()
    path, shapes = diagnosed(module, tmp_path)
    code, report = graphfix("diagnose", str(path), *shapes)
    assert (code, errors(report)) == (0, []), report
    written_unchanged(module, path, shapes, [(1, 3, 32, 48), (2, 3, 40, 56)], tmp_path)


def test_a_pad_to_the_step_that_the_trace_dropped_stays_an_error(tmp_path):
    torch.manual_seed(0)
    diagnosed(PaddedFlowish().eval(), tmp_path)  # the same error and hint, and repair exits 1


def raft(updates: int = 3):
    """torchvision's raft_small, random weights, its last flow after `updates` refinements."""
    from fixtures.torchvision_models import register_ops

    register_ops()
    from torchvision.models.optical_flow import raft_small

    class Last(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.raft = raft_small(weights=None)

        def forward(self, image1, image2):
            return self.raft(image1, image2, num_flow_updates=updates)[-1]

    torch.manual_seed(0)
    return Last().eval()


@pytest.mark.slow
def test_raft_is_left_alone_at_the_multiples_of_8_its_hint_gives(tmp_path):
    module, names = raft(), ("image1", "image2")
    path = export(module, (torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128)), tmp_path / "raft.onnx", names)
    for shape in [(1, 3, 128, 128), (2, 3, 136, 160)]:  # the export is right at multiples of 8
        want, got = outputs(module, path, shape, names)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=str(shape))
    assert outputs(module, path, (1, 3, 130, 128), names) == (None, None)  # both refuse a size off the step
    code, report = graphfix("diagnose", str(path))
    shapes = given_shapes(off_the_step(code, report)[0]["hint"])
    assert [arg.split("=")[0] for arg in shapes[1::2]] == list(names), shapes
    code, report = graphfix("diagnose", str(path), *shapes)
    assert (code, report["models"][0]["findings"]) == (0, []), report
    written_unchanged(module, path, shapes, [(1, 3, 128, 192), (2, 3, 192, 136)], tmp_path, names)


def test_shapes_that_agree_at_several_sizes_of_a_period_are_a_step_too(tmp_path):
    """MaxViT's shortcut agrees at 2 sizes in every 4: a failure off them was GF003's, whose hint blamed a mask of
    a lower rank; now GF000's, its hint naming the sizes and multiples of 4 to give."""
    torch.manual_seed(0)
    module = Shortcut().eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(module, (torch.randn(2, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "B", 2: "H", 3: "W"}, "y": {0: "B", 2: "H4", 3: "W4"}})
    with torch.no_grad(), pytest.raises(RuntimeError, match="size of tensor"):
        module(torch.randn(2, 3, 21, 22))  # PyTorch fails there too
    code, report = graphfix("diagnose", str(path), "--shape", "x=2x3x21x22")
    [found] = errors(report)
    assert (code, found["rule"], found["nodes"]) == (1, "GF000", ["/Add"]), report
    assert "2 sizes in every 4 (multiples of 4 among them)" in found["hint"], found
    assert given_shapes(found["hint"]) == ["--shape", "x=2x3x24x24"], found  # multiples, not the least sizes
    written_unchanged(module, path, given_shapes(found["hint"]), [(1, 3, 24, 24), (2, 3, 27, 40)], tmp_path)


def test_hrnet_upsampled_branches_are_a_step_the_hint_gives_sizes_on(tmp_path):
    """timm's HRNet adds each branch, upsampled by a Resize of scale 2, 4 or 8, to one at a finer resolution: the
    shapes agree where the strided Convs' ceilings do, multiples of 32 among them, and PyTorch fails elsewhere too
    (helper 93). The size analysis did not follow a Resize by scales, so the failure was GF003's with a hint blaming
    a mask of a lower rank; now GF000's, with the step's `--shape`, where the model is left alone and matches
    PyTorch."""
    from fixtures.library_models import import_timm

    torch.manual_seed(0)
    module = import_timm().create_model("hrnet_w18_small", pretrained=False, num_classes=10).eval()
    path = export(module, (torch.randn(2, 3, 64, 64),), tmp_path / "hrnet.onnx")
    with torch.no_grad(), pytest.raises(RuntimeError, match="size of tensor"):
        module(torch.randn(1, 3, 48, 48))  # PyTorch fails off the step too
    code, report = graphfix("diagnose", str(path))
    found = errors(report)
    assert code == 1 and found and {f["rule"] for f in found} == {"GF000"}, report
    assert all("(multiples of 32 among them) of W and H" in f["hint"] for f in found), report
    shapes = given_shapes(found[0]["hint"])
    assert len(shapes) == 2 and all(int(d) % 32 == 0 for d in shapes[1].split("=")[1].split("x")[2:]), shapes
    written_unchanged(module, path, shapes, [(1, 3, 64, 96), (2, 3, 96, 61)], tmp_path)
