"""An output axis held at its input's export size (graphfix.validate.held_sizes), found by review (helper 33):
`pooled + torch.ones(int(T), 8)` broadcasts one frame to the export's 40 rows, and GF004 repaired the Reshape that
failed; the output, declared dynamic as `frames`, stayed 40 rows at every T and was written with exit 0. Now the
proof, which knows T was 40 at export, refuses a model whose `frames` stays 40 while T moves. A round-up that
equals T at export but moves with it is not held."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import graphfix
from graphfix.validate.held_sizes import HeldSizes


def outputs(*shape):
    return {"y": np.zeros(shape, np.float32)}


def test_an_axis_as_long_as_one_input_dim_at_export_is_held_only_where_it_stays():
    held = HeldSizes({"y": ["B", "frames", 8]}, {"T"}, set())
    held.learn(outputs(2, 40, 8), {"B": 2, "T": 40})
    assert held.problems(outputs(1, 40, 8), {"B": 1, "T": 21}) == [
        "output 'y' axis 1 ('frames', declared dynamic) stays 40, T's export size, while T is 21: a size computed at "
        "export holds it"]
    assert held.problems(outputs(1, 24, 8), {"B": 1, "T": 21}) == []  # a round-up to 8: it moved with T
    assert held.problems(outputs(3, 40, 8), {"B": 3, "T": 40}) == []  # T at its export size: nothing to tell


@pytest.mark.parametrize(("declared", "watched", "static", "why"), [
    (["B", "frames", 8], {"T", "S"}, set(), "two input dims were 40 at export: which one it follows is not known"),
    (["B", "frames", 8], {"T"}, {40}, "the model declares 40 elsewhere: it may be its own size"),
    (["B", "T", 8], {"T"}, set(), "named after an input dim: the declared shape checks it"),
    (["B", "y_dim_1", 8], {"T"}, set(), "a name the TorchScript exporter made up, not a declaration"),
])
def test_an_axis_is_not_held_where_its_length_may_be_another_size(declared, watched, static, why):
    held = HeldSizes({"y": declared}, watched, static)
    held.learn(outputs(2, 40, 8), {"B": 2, "T": 40, "S": 40})
    assert held.held == {}, why


@pytest.mark.torch
@pytest.mark.parametrize("baked", [True, False])
def test_a_frame_broadcast_to_a_table_of_int_t_rows_is_refused_and_the_traced_size_is_repaired(tmp_path, baked):
    torch = pytest.importorskip("torch")

    class PooledRows(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(16, 32)

        def forward(self, x):
            h = self.proj(x)
            t = int(h.shape[1])  # bakes the Reshape (GF004 repairs it), and the rows below when `baked`
            grouped = h.reshape(h.shape[0], t, 4, 8).mean(2)
            rows = torch.ones(t if baked else h.shape[1], 8)
            return h.mean(1, keepdim=True)[..., :8] + rows + grouped[:, :1]

    torch.manual_seed(0)
    module, path = PooledRows().eval(), tmp_path / "pooled.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 40, 16),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "frames"}}, dynamo=False)
    result = graphfix.repair(str(path), output=str(tmp_path / "fixed.onnx"))
    if baked:
        assert result.status == "failed" and "stays 40, T's export size" in result.error, result.error
        assert not (tmp_path / "fixed.onnx").exists()
        return
    assert result.status == "repaired", result.error
    from conftest import run

    for batch, time in ((1, 23), (2, 40), (3, 64)):
        x = torch.randn(batch, time, 16)
        with torch.no_grad():
            want = module(x).numpy()
        np.testing.assert_allclose(run(str(tmp_path / "fixed.onnx"), {"x": x.numpy()})[0], want, rtol=1e-4,
                                   atol=1e-5)
