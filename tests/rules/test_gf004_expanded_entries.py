"""GF004 on an Expand of a constant shape that a later op holds: `x[:, :1].expand(-1, int(T), -1)` traced at 7
frames is `Expand(x[:, :1], [1, 7, 1])`. Its first fix read the 7 as the input's own dim ("1 keeps it": the only
source of that dim's export size was the Expand itself, whose input had 1 there) and computed `[1, 1, 1]`, which
validation refused (exit 1). An Add, or a Concat off its axis, that meets the entry with T, past an elementwise
op (`* 2`), holds it at T at every size: the entry is rebuilt from T (graphfix.analysis.sizes.solve
`passed_along`, `broadcast_pins`): determined where a Concat holds it, unsafe where a broadcast does (a count of
the model's own fits too, which a size of 1 broadcasts against). The TorchScript exporter's `expand(-1, n, -1)`
compares its shape with `ones(3) * -1`: that ConstantOfShape's 3 is a rank, no echo of the size (7 // 2), which
made the fix unsafe for that reason.
Where nothing holds the entry, "1 keeps it" is not said on an Expand's word alone."""

from __future__ import annotations

import json
import warnings

import pytest
from click.testing import CliRunner
from conftest import matches_module

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class FirstFrame(torch.nn.Module):
    def __init__(self, use):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.use = torch.nn.Linear(4, 4), use

    def forward(self, x):
        first = self.lin(x[:, :1]).expand(-1, int(x.shape[1]), -1)
        return self.use(first, x)


def _export(tmp_path, module, length=7):
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, length, 4),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"}})
    return path


def _matches(module, out) -> None:
    matches_module(out, module, [(1, 3, 4), (3, 12, 4), (2, 7, 4)])


def test_an_expand_entry_a_concat_holds_at_the_length_is_rebuilt_from_it(tmp_path):
    """A Concat off its axis holds the entry at T at every size, T = 1 too: determined."""
    module = FirstFrame(lambda first, x: torch.cat([x, first.relu()], -1))
    out = tmp_path / "fixed.onnx"
    done = CliRunner().invoke(cli, ["repair", str(_export(tmp_path, module)), "-o", str(out)])
    assert done.exit_code == 0 and "entry 1 of Expand" in done.output, done.output
    _matches(module, out)


@pytest.mark.parametrize("use", [
    lambda first, x: x + first * 2,
    lambda first, x: torch.where(x > 0, first, x),
], ids=["added-past-a-mul", "where"])
def test_an_expand_entry_a_broadcast_holds_is_rebuilt_only_on_request(tmp_path, use):
    """A broadcast holds the entry at T, or at T = 1, where a count of the model's own would broadcast against x
    (helper 130's trap below): unsafe. Applied, the original is no reference at other lengths (`Fix.moves`: at
    T = 1 it broadcasts its 1 against the 7) and the repair matches PyTorch."""
    module, out = FirstFrame(use), tmp_path / "fixed.onnx"
    path = _export(tmp_path, module)
    refused = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])
    assert refused.exit_code == 1 and not out.exists() and "T = 1 broadcasts" in refused.output, refused.output
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), "--unsafe-fixes"])
    assert done.exit_code == 0 and "entry 1 of Expand" in done.output, done.output
    _matches(module, out)


class Upmix(torch.nn.Module):
    """A trap (helper 130): mono or stereo in, always 2 channels out, `x + conv(x.mean(1)).expand(-1, 2, -1)`,
    exported at 2 channels: the Add holds the 2 at C = 2, and at C = 1 by broadcasting, the model's own count."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(1, 1, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x.mean(1, keepdim=True)).expand(-1, 2, -1)


def test_a_count_of_the_models_own_that_a_broadcast_meets_is_not_rebuilt_by_default(tmp_path):
    path, out = tmp_path / "m.onnx", tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Upmix().eval(), (torch.randn(2, 2, 64),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B", 1: "C", 2: "S"}})
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])
    assert done.exit_code == 1 and not out.exists(), done.output


def test_an_expand_of_a_one_that_nothing_holds_is_not_read_as_its_input_dim(tmp_path):
    """`x[:, :1].expand(-1, int(T), -1).sum(1)` runs at every length, 7 times the first frame: the 7 is T or the
    model's own count, and `[1, 1, 1]` (the input's dim, which is 1) is neither. Safe before (at 9 frames: at 7
    the rank's 3 read as 7 // 2 made it unsafe)."""
    path = _export(tmp_path, FirstFrame(lambda first, x: first.sum(1)), length=9)
    done = CliRunner().invoke(cli, ["diagnose", str(path), "--format", "json"])
    findings = json.loads(done.output)["models"][0]["findings"]
    expands = [f for f in findings if f["rule"] == "GF004" and "Expand" in f["message"]]
    assert expands and all(f["fix"] is None or f["fix"]["safety"] != "safe" for f in expands), done.output


class ClassToken(torch.nn.Module):
    """A ViT's class token put before the patches, `cat([cls.expand(int(B), -1, -1), x], 1)`: the parameter has no
    tensor upstream that carries the batch (refused before: "linked by value only"); the Concat holds its entry at B."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.cls, self.lin = torch.nn.Parameter(torch.randn(1, 1, 4)), torch.nn.Linear(4, 4)

    def forward(self, x):
        h = torch.cat([self.cls.expand(int(x.shape[0]), -1, -1), self.lin(x)], 1)
        return h[:, 0] + h.mean(1)


def test_a_class_token_expanded_to_the_batch_with_a_python_int_is_rebuilt_from_a_graph_input(tmp_path):
    module, out = ClassToken(), tmp_path / "fixed.onnx"
    done = CliRunner().invoke(cli, ["repair", str(_export(tmp_path, module)), "-o", str(out)])
    assert done.exit_code == 0 and "entry 0 of Expand" in done.output, done.output
    _matches(module, out)


def test_a_class_token_traced_at_batch_1_is_not_written(tmp_path):
    """At batch 1 the Expand's shape is all ones and the output is declared [1, 4]: nothing says which 1 is the
    batch; the model goes out unchanged, failing at other batches (exit 1)."""
    path, out = tmp_path / "m.onnx", tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ClassToken().eval(), (torch.randn(1, 7, 4),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"}})
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])
    assert done.exit_code == 1 and "unchanged" in done.output and "FAILS" in done.output, done.output
