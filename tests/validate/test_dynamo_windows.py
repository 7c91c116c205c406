"""Exports that read a window of fixed frames from a dynamic length (helper 147), and outputs torch.export declares
with a rank the graph never gives.

`(x[:, 2:14] * w).sum(1)` with a learned [12, 8] `w` runs at every T from 14, in PyTorch and onnxruntime alike.
The graph alone does not tell it from `if x.shape[1] >= 14:` with another path below, or from `int(T)` traced at
14 (helpers 147 and 152): refused there, with the floor named. What tells them apart is torch.export's own record
of the sizes it traced for (GF016, graphfix.io.torch_ranges): a dynamo export declared `Dim("T", min=14)` holds
`T >= 14`, and within it the window is the module's."""

from __future__ import annotations

import warnings

import onnx
import pytest
from click.testing import CliRunner
from conftest import agrees_with_module

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch]


class Window(torch.nn.Module):
    """A learned weighting of frames 2..13; with `branch`, only where the input has them (else the mean)."""

    def __init__(self, branch: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.w, self.branch = torch.nn.Parameter(torch.randn(12, 8)), branch

    def forward(self, x):
        if self.branch and x.shape[1] < 14:
            return x.mean(1)
        return (x[:, 2:14] * self.w).sum(1)


class PooledFirstTwelve(torch.nn.Module):
    """The mean of the first 12 frames by a pool of 12, squeezed: torch.export cannot prove the pooled length
    `Min(12, T) // 12` is 1 (its T was declared from 2) and declares the output [B, 8, that], which the ONNX
    Squeeze never gives; PyTorch squeezes that axis too, where it is 1, from T = 12 on."""

    def forward(self, x):
        return torch.nn.functional.avg_pool1d(x[:, :12].transpose(1, 2), 12).squeeze(-1)


def _export(module, path, least=None):
    length = torch.export.Dim("T") if least is None else torch.export.Dim("T", min=least)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, 16, 8),), str(path), dynamo=True, input_names=["x"],
                          output_names=["y"], dynamic_shapes=({0: torch.export.Dim("B"), 1: length},))
    return path


def _matches(module, path, lengths) -> bool:
    return agrees_with_module(path, module, [(2, length, 8) for length in lengths])


def _repair(path, tmp_path):
    out = tmp_path / "out.onnx"
    return CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)]), out


def test_a_window_kept_from_a_branch_with_no_record_of_it_is_refused(tmp_path):
    """The TorchScript exporter keeps the path it traced and records no guard: the graph of the window below."""
    module = Window(branch=True)
    path = tmp_path / "branch.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, 16, 8),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B"}})
    assert _matches(module, path, [14, 20, 37]) and not _matches(module, path, [10])  # the other path is gone
    done, out = _repair(path, tmp_path)
    assert done.exit_code != 0 and not out.exists(), done.output


def test_a_window_of_the_models_own_traced_for_its_sizes_is_written(tmp_path):
    """Declared `Dim("T", min=14)`: torch.export records `T >= 14`, where the graph is the module's."""
    module = Window()
    path = _export(module, tmp_path / "own.onnx", least=14)
    assert _matches(module, path, [14, 20, 37])
    done, out = _repair(path, tmp_path)
    assert done.exit_code == 0 and out.read_bytes() == path.read_bytes(), done.output
    assert "GF003" not in done.output and "GF006" not in done.output, done.output


def test_an_output_declared_with_a_rank_its_squeeze_never_gives_is_held_to_what_it_gives(tmp_path):
    """helper 147: every probe "failed" (`output 'squeeze' has rank 2, the original declares 3`): `diagnose` gave a
    GF000 error and `repair` exited 1 on a healthy export."""
    module = PooledFirstTwelve()
    path = _export(module, tmp_path / "m.onnx", least=2)  # T from 2: the pooled length may be 0
    assert len(onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim) == 3
    assert _matches(module, path, [12, 20, 37])
    diagnosed = CliRunner().invoke(cli, ["diagnose", str(path)])
    assert diagnosed.exit_code == 0 and "error" not in diagnosed.output, diagnosed.output
    done, out = _repair(path, tmp_path)
    assert done.exit_code == 0 and out.read_bytes() == path.read_bytes(), done.output


def test_the_error_on_a_window_says_from_which_size_it_runs_and_how_to_give_those_sizes(tmp_path):
    """Exported with `Dim("T")`: torch.export records no floor (the window broadcasts at T = 3). GF003 said "runs
    only when Min(14, T) - 2 is 1 or 12: a size captured at export time (trace-baked)"; it now names the floor, both
    readings, and the way to write the model where the user knows it takes only those sizes."""
    module = Window()
    path = _export(module, tmp_path / "own.onnx")
    diagnosed = CliRunner().invoke(cli, ["diagnose", str(path)])
    assert "which is 12 once T >= 14" in diagnosed.output and "--skip GF003,GF006" in diagnosed.output, \
        diagnosed.output
    out = tmp_path / "out.onnx"
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), "--skip", "GF003,GF006",
                                    "--shape", "x=1x20x8"])
    assert done.exit_code == 0 and _matches(module, out, [14, 20, 37]), done.output
