"""Constant positions `arange(n)` that meet data, read as an echo of a baked size (graphfix.analysis.position_echoes):
`arange(int(T)) < lengths[:, None]` traced at T = 20 folds into the constant [0, ..., 19]."""

from __future__ import annotations

import onnx_graphsurgeon as gs
import pytest
from conftest import parse

from graphfix.analysis.context import RuleContext
from graphfix.analysis.position_echoes import position_echoes
from graphfix.analysis.shapes import infer_shapes
from graphfix.core.rule import RuleOptions


def _graph(positions: str, dims: str) -> tuple[list[gs.Node], RuleContext]:
    text = f"""
    < ir_version: 8, opset_import: ["" : 17] >
    g (int64[B, 1] lengths) => (bool[B, ?] y) {{
        pos = Constant <value = int64[{dims}] {{{positions}}}> ()
        y = Less(pos, lengths)
    }}
    """
    model = infer_shapes(parse(text))
    graph = gs.import_onnx(model)
    ctx = RuleContext(model, graph, None, RuleOptions(static=True))
    return list(graph.nodes), ctx


TWENTY = ", ".join(str(i) for i in range(20))


@pytest.mark.parametrize(("wanted", "heard"), [([20], True), ([19], True), ([10], True), ([33], False), ([], False)])
def test_positions_of_a_count_that_is_a_form_of_the_size_are_heard(wanted, heard):
    nodes, ctx = _graph(TWENTY, "1, 20")
    lines = position_echoes(nodes, wanted, ctx.constant_value, lambda node: False)
    assert bool(lines) is heard, lines
    assert not lines or "reads 20 constant positions" in lines[0]


@pytest.mark.parametrize("values", [[4 * i for i in range(20)], list(range(1, 21)), list(range(19, -1, -1))],
                         ids=["scaled by a hop", "from 1", "reversed"])
def test_positions_scaled_shifted_or_reversed_are_positions(values):
    """Helper 146: `arange(int(T)) * 4 < samples`, `arange(1, T + 1) <= lengths`, `(T - 1) - arange(T)`."""
    assert position_echoes(*_heard_args(", ".join(str(v) for v in values), "1, 20"))


def test_values_that_are_no_positions_are_not_read():
    """Twenty numbers in another order, a table of two rows, a node the fix rebuilds: none is heard."""
    shuffled = ", ".join(str(i) for i in [1, 0, *range(2, 20)])
    assert not position_echoes(*_heard_args(shuffled, "1, 20"))
    two_rows = ", ".join(str(i) for i in [*range(20), *range(20)])
    assert not position_echoes(*_heard_args(two_rows, "2, 20"))
    nodes, ctx = _graph(TWENTY, "1, 20")
    assert not position_echoes(nodes, [20], ctx.constant_value, lambda node: True)


def _heard_args(positions: str, dims: str):
    nodes, ctx = _graph(positions, dims)
    return nodes, [20], ctx.constant_value, lambda node: False
