"""Traps from red teams 40 and 41 that the echo check did not read: `t = int(x.shape[1])` pins a head split's
Reshape (GF004 rebuilds the entry, safe) and is baked again where no form of it was read: a sum over the length
scaled after a Linear (`Linear(h.sum(1)) / (t - 5)`: the walk from the scale to the sum ended at the MatMul), a
cumulative sum over the length scaled by `1 / (t - 5)`, a scale eight ops from its sum, and cuts at `t - 4`,
`t + 5`, `3 * t // 4` and `2 * t // 3`. Each was written with exit 0 and wrong at every other length; now the walk
passes a linear map (a MatMul or Gemm with a constant weight, and its bias), a CumSum is a sum along its axis, the
walk to a sum is 8 ops long, and a cut reads the size plus or minus up to 5, three quarters and two thirds of it
(graphfix.analysis.echoes): the repair refuses by default (exit 1, nothing written). A vector of one number
repeated is read too where it scales a sum once taken (test_traps_review40's uniform-vector trap, a strict xfail
before), not data before a sum (its LayerScale control). The controls, a model's own
numbers beside a Linear, a cumulative sum and a cut, are still repaired (the suite's guard compares each written
model with the module at other lengths).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from fixtures.baked_heads import Heads, export, repair  # noqa: E402  (imports torch)

pytestmark = pytest.mark.torch
LENGTH = 37


def _module(name: str, body, keeps_length: bool) -> type:
    """A Heads whose output is `body(self, h, t)`; with `keeps_length`, its output has a length axis, declared
    dynamic as L."""
    return type(name, (Heads,), {"forward": lambda self, x: body(self, *self.heads(x)), "keeps_length": keeps_length})


def _far(self, h, t):
    """Eight ops from the sum to the scale: two Linears (MatMul and Add each), a Reshape, a Transpose, another."""
    s = self.lin(self.lin(h.sum(1)))
    return s.reshape(-1, 2, 4).transpose(1, 2).reshape(-1, 8) * (1.0 / (t - 5))


TRAPS = {
    "linear-after-sum": (lambda self, h, t: self.lin(h.sum(1)) / (t - 5), False),
    "linear-after-mean": (lambda self, h, t: self.lin(h.mean(1)) * (t / (t - 1)), False),
    "cumsum": (lambda self, h, t: h.cumsum(1) * (1.0 / (t - 5)), True),
    "eight-ops-away": (_far, False),
    "cut-end-minus-4": (lambda self, h, t: h[:, : t - 4], True),
    "cut-end-plus-5": (lambda self, h, t: h[:, : t + 5].sum(1), False),
    "index-three-quarters": (lambda self, h, t: h[:, 3 * t // 4], False),
    "cut-start-two-thirds": (lambda self, h, t: h[:, 2 * t // 3:], True),
}
CONTROLS = {
    "linear-then-own-scale": (lambda self, h, t: self.lin(h) * 0.3, True),  # no sum over the length
    "own-cumsum-over-features": (lambda self, h, t: h.cumsum(2) * 0.3, True),
    "own-cut": (lambda self, h, t: h[:, 5:], True),  # 5 is 37 // 7, a seventh: not read
    "own-index": (lambda self, h, t: h[:, 7], False),
}


@pytest.mark.parametrize("trap", TRAPS.values(), ids=TRAPS)
def test_a_size_baked_beside_a_safe_fix_in_a_form_red_team_41_found_makes_it_unsafe(tmp_path, trap):
    module = _module("Trap", *trap)()
    done, out = repair(export(module, tmp_path / "m.onnx", LENGTH, {0: "B", 1: "L"} if module.keeps_length
                              else {0: "B"}))
    assert done.exit_code == 1 and not out.exists(), done.output
    assert "which is" in done.output or f"scales a sum over an axis of the size {LENGTH}" in done.output, done.output


@pytest.mark.parametrize("name", CONTROLS)
def test_a_models_own_numbers_beside_a_linear_a_cumsum_or_a_cut_are_no_echo(tmp_path, name):
    module = _module("Control", *CONTROLS[name])()
    done, out = repair(export(module, tmp_path / "m.onnx", LENGTH, {0: "B", 1: "L"} if module.keeps_length
                              else {0: "B"}))
    assert done.exit_code == 0 and out.exists(), done.output
