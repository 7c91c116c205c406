"""A fix may expose the next: a baked Reshape leaves what follows it static until it is rebuilt, so a stack of
attention blocks with `view(int(B), int(T), ...)` takes two rounds of fixes a block. The rounds were capped at 8:
five blocks were refused with exit 1 while the finding left said "(safe)" (helper 129). The limit is one round
for each node that reads a shape, and 8 more (`graphfix.pipeline.engine.round_limit`)."""

from __future__ import annotations

import warnings

import pytest
from click.testing import CliRunner
from conftest import matches_module

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

D = 24


class Attention(torch.nn.Module):
    def __init__(self, heads: int = 3):
        super().__init__()
        self.heads, self.qkv, self.out = heads, torch.nn.Linear(D, 3 * D), torch.nn.Linear(D, D)

    def forward(self, x):
        b, t = int(x.shape[0]), int(x.shape[1])
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-1, -2) / (D // self.heads) ** 0.5).softmax(-1)
        return x + self.out((weights @ v).transpose(1, 2).reshape(b, t, D))


def test_a_stack_of_blocks_each_baking_its_views_is_repaired_in_as_many_rounds_as_it_takes(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(*[Attention() for _ in range(6)]).eval()
    path, out = tmp_path / "m.onnx", tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 11, D),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"}})
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])
    assert done.exit_code == 0 and done.output.count("applied GF004") == 12, done.output
    matches_module(out, module, [(1, 5, D), (3, 29, D), (2, 11, D)])
