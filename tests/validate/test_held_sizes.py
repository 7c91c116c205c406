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


def held_after(*runs: tuple[int, int]) -> list[str]:
    """The problems once the axis was `length` long at each (T, length) of `runs`, learnt at T = 40 (40 long)."""
    held = HeldSizes({"y": ["B", "frames", 8]}, {"T"}, set())
    held.learn(outputs(2, 40, 8), {"B": 2, "T": 40})
    for time, length in runs:
        held.watch(outputs(1, length, 8), {"B": 1, "T": time})
    return held.problems()


def test_an_axis_that_stays_at_the_export_size_below_and_above_it_is_held():
    assert held_after((21, 40), (43, 40), (40, 40)) == [
        "output 'y' axis 1 ('frames', declared dynamic) stays 40, T's export size, at T = 21, 43: a size computed "
        "at export holds it"]


@pytest.mark.parametrize("runs", [
    [(21, 21), (43, 40)],  # a cut to 40 on purpose: it moved below
    [(21, 40), (43, 60)],  # a round-up to a multiple of 20: it moved above
    [(43, 40), (87, 40)],  # only longer sizes seen: a cap fits too
    [(21, 40), (43, 43)],  # a pad to 40 at least
])
def test_an_axis_that_moves_somewhere_or_is_seen_on_one_side_only_is_not_held(runs):
    assert held_after(*runs) == []


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
@pytest.mark.parametrize("kind", ["baked", "traced", "cut"])
def test_a_frame_broadcast_to_a_table_of_int_t_rows_is_refused_and_the_traced_size_is_repaired(tmp_path, kind):
    """`baked`: ones(int(T), 8) added to one frame, refused; `traced`: ones(T, 8), repaired; `cut`: the frames cut to
    40 on purpose (40 = T at export, but 23 rows at T = 23): the held-size check lets it through (review, helper
    35), and the echo check refuses it, since the graph does not tell `[:, :40]` from `[:, :int(T)]` beside the
    Reshape that the same int T pins (graphfix.analysis.echoes, helper 57)."""
    torch = pytest.importorskip("torch")

    class PooledRows(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(16, 32)

        def forward(self, x):
            h = self.proj(x)
            t = int(h.shape[1])  # bakes the Reshape (GF004 repairs it), and the rows below when `baked`
            grouped = h.reshape(h.shape[0], t, 32)[..., 8:16]  # no entry a size divides (4 = T // 10: ambiguous)
            if kind == "cut":
                return grouped[:, :40]
            rows = torch.ones(t if kind == "baked" else h.shape[1], 8)
            return h.mean(1, keepdim=True)[..., :8] + rows + grouped[:, :1]

    torch.manual_seed(0)
    module, path = PooledRows().eval(), tmp_path / "pooled.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 40, 16),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "frames"}}, dynamo=False)
    result = graphfix.repair(str(path), output=str(tmp_path / "fixed.onnx"))
    if kind == "baked":  # GF010 refuses it from the graph; without GF010, the proof does from the runs
        assert result.status == "failed" and "GF010" in result.error, result.error
        result = graphfix.repair(str(path), output=str(tmp_path / "fixed.onnx"), skip=("GF010",))
        assert result.status == "failed" and "stays 40, T's export size, at T = " in result.error, result.error
        assert not (tmp_path / "fixed.onnx").exists()
        return
    if kind == "cut":
        assert result.status == "unchanged" and "no safe fix" in result.error, result.error
        assert "stays 40" not in result.error  # refused before the proof: the held-size check is not what refuses
        fixes = [f.fix for f in graphfix.diagnose(str(path), static=True) if f.fix is not None]
        assert any("reads the integer 40 as a cut" in fix.reason for fix in fixes), [f.reason for f in fixes]
        return
    assert result.status == "repaired", result.error
    from conftest import run

    for batch, time in ((1, 23), (2, 40), (3, 64)):
        x = torch.randn(batch, time, 16)
        with torch.no_grad():
            want = module(x).numpy()
        np.testing.assert_allclose(run(str(tmp_path / "fixed.onnx"), {"x": x.numpy()})[0], want, rtol=1e-4,
                                   atol=1e-5)
