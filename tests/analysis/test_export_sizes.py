"""Export-time sizes read from broadcasting ops: the same sizes as pairing every operand with every other one, in
work linear in the operands' dims."""

from __future__ import annotations

from conftest import parse

from graphfix.analysis.context import RuleContext
from graphfix.analysis.export_sizes import ExportSizes, export_sizes
from graphfix.core.rule import RuleOptions
from graphfix.io.graphs import import_graph


def _sizes(text: str) -> ExportSizes:
    model = parse('< ir_version: 8, opset_import: ["" : 17] >\n' + text)
    ctx = RuleContext(model, import_graph(model), None, RuleOptions(static=True))
    return export_sizes(ctx, ctx.evaluator)


def test_a_dynamic_dim_against_a_fixed_size_is_solved():
    sizes = _sizes("g (float[B, T] x, float[1, 7] p) => (float[B, 7] y) { y = Add(x, p) }")
    assert sizes._values == {"T": 7} and sizes.solved == {"T"}


def test_a_sum_of_one_tensor_many_times_learns_once_per_dim(monkeypatch):
    """`Sum(x, ..., x, p)` with 200 x: each (dim, axis) is read once, not once per pair of operands (a Sum of one
    tensor 8000 times cost minutes and gigabytes)."""
    calls = []
    learn = ExportSizes.learn
    monkeypatch.setattr(ExportSizes, "learn", lambda self, *a, **k: (calls.append(a), learn(self, *a, **k))[1])
    operands = ", ".join(["x"] * 200 + ["p"])
    sizes = _sizes(f"g (float[B, T] x, float[1, 7] p) => (float[B, 7] y) {{ y = Sum({operands}) }}")
    assert sizes._values == {"T": 7} and sizes.solved == {"T"}
    assert len(calls) <= 2, len(calls)
