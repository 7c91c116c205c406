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


@pytest.mark.parametrize(("wanted", "unknown", "heard"), [([20], False, True), ([19], False, True), ([10], False, True),
                                                         ([33], False, False), ([], True, True), ([], False, False)])
def test_positions_of_a_count_that_is_a_form_of_the_size_are_heard(wanted, unknown, heard):
    nodes, ctx = _graph(TWENTY, "1, 20")
    lines = position_echoes(nodes, wanted, ctx.constant_value, lambda node: False, unknown)
    assert bool(lines) is heard, lines
    assert not lines or "positions 0 to 19, 20 of them" in lines[0]


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
