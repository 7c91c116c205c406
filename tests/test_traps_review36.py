"""Traps from the review of this stop's proof and GF006 changes (red team 36). Each was written wrong with exit 0
by `graphfix repair` with its default flags; each is now refused (exit 1, nothing written), or, for the healthy
model, probed where it fails:

- a rotary table of a base no library uses, computed from the length (NTK scaling by the length, no branch), was
  regrown with the export length's frequencies;
- an eye added to a graph (a seasonal period's links, `(i - j) % 8 == 0`) was rebuilt as an identity: it is also
  every period past the export length, however its values are applied;
- the ints the TorchScript exporter writes for output axes left out of `dynamic_axes` "refuted" the right entry of
  a baked reshape, and the one wrong entry that keeps them was applied;
- `pe[4 - T // 4:]` bounded T by 4 (the export ran at 13), so every probe stayed at 4 and an output cut with
  int(T) passed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

import graphfix
from graphfix.cli import cli
from graphfix.validate.graph_sizes import size_limit

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional
pytestmark = pytest.mark.torch


class RotaryBaseFromLength(nn.Module):
    """Rotary positions whose base grows with the length (NTK scaling by the length, no branch):
    `10000 * (T / 8) ** (d / (d - 2))`."""

    def forward(self, x):
        t, d = int(x.shape[1]), x.shape[2]
        inv = 1.0 / (10000.0 * (t / 8) ** (d / (d - 2))) ** (torch.arange(0, d, 2).float() / d)
        angles = torch.arange(t).float()[:, None] * inv[None, :]
        emb = torch.cat([angles, angles], -1)
        half = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
        return x * emb.cos() + half * emb.sin()


class SeasonalLinks(nn.Module):
    """Attention weights plus the links of a period of 8: `(i - j) % 8 == 0`, an eye at T <= 8."""

    def forward(self, x):
        i = torch.arange(int(x.shape[1]))
        season = ((i[:, None] - i[None, :]) % 8 == 0).float()
        return (torch.softmax(x @ x.transpose(1, 2) / 4, -1) + season) @ x


class HeadSums(nn.Module):
    """16 features split into 4 heads of 4 with int(T), summed per head: [B, 4, T]."""

    def forward(self, x):
        return x.reshape(x.shape[0], int(x.shape[1]), 4, 4).permute(0, 2, 1, 3).sum(-1)


class PooledContext(nn.Module):
    """Pooled frames plus right-aligned positions `pe[4 - T // 4:]` (T <= 19), the output cut with int(T)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.pe = nn.Parameter(torch.randn(4, 16))

    def forward(self, x):
        t = x.shape[1]
        pooled = F.avg_pool1d(x.transpose(1, 2), 4).transpose(1, 2) + self.pe[4 - t // 4:]
        return (x + pooled.mean(1, keepdim=True))[:, :int(t)]


def export(module: nn.Module, length: int, path: Path, output_axes: dict | None = None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, length, 16),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B", 1: "T"}, **({"y": output_axes} if output_axes else {})})
    return path


def refused(path: Path) -> str:
    out = path.with_name("fixed.onnx")
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)], catch_exceptions=False)
    assert done.exit_code == 1 and not out.exists(), done.output
    return done.output


@pytest.mark.parametrize(("module", "length", "says"), [
    (RotaryBaseFromLength(), 12, ""),  # its tables are folded while repairing: the static pass sees no fix
    (SeasonalLinks(), 6, "a seasonal graph's links"),
], ids=["base-from-length", "seasonal-links"])
def test_a_structured_constant_another_construction_gives_is_not_rebuilt_by_default(tmp_path, module, length, says):
    path = export(module, length, tmp_path / "m.onnx", {0: "B", 1: "T"})
    refused(path)
    fixes = [f.fix for f in graphfix.diagnose(str(path), static=True) if f.fix is not None]
    assert all(fix.safety.value == "unsafe" for fix in fixes), [fix.summary for fix in fixes]
    assert not says or any(says in fix.reason for fix in fixes), [fix.reason for fix in fixes]


def test_ints_the_exporter_wrote_for_undeclared_axes_refute_no_entry(tmp_path):
    path = export(HeadSums(), 4, tmp_path / "heads.onnx")  # the output declared [B, 4, 4]: 4 = T at export
    output = refused(path)
    assert "ambiguous" in output or "none of" in output, output


def test_a_table_sliced_from_a_constant_minus_a_computed_size_bounds_nothing(tmp_path):
    path = export(PooledContext(), 13, tmp_path / "pooled.onnx", {0: "B", 1: "T"})
    import onnx

    assert size_limit(onnx.load(path)) is None  # 4 - T // 4 passes 4 at T = 16, and the export ran at 13
    out = tmp_path / "fixed.onnx"
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)], catch_exceptions=False)
    assert done.exit_code == 1, done.output  # the int(T) cut fails where a probe goes past 13
