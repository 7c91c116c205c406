"""graphfix.analysis.walk.within: the bounded walk the rules' reads share (GF013's Shape that measures a declared
tensor, sums_near's softmax, int_echoes' shape vector and size)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.walk import within


def _chain():
    """x -> Relu -> Neg -> Shape, and x -> Add(x, x) (a diamond read twice) -> Shape."""
    x = gs.Variable("x", np.float32, [2, 3])
    relu, neg, shape, added, measured = (gs.Variable(n) for n in ("relu", "neg", "shape", "added", "measured"))
    nodes = [gs.Node("Relu", inputs=[x], outputs=[relu]), gs.Node("Neg", inputs=[relu], outputs=[neg]),
             gs.Node("Shape", inputs=[neg], outputs=[shape]), gs.Node("Add", inputs=[x, x], outputs=[added]),
             gs.Node("Shape", inputs=[added], outputs=[measured])]
    return x, shape, nodes


def test_an_end_is_met_within_its_hops_through_what_it_may_pass():
    x, _, _ = _chain()
    shape = lambda op, _: op.op == "Shape"  # noqa: E731
    assert within([x], 2, shape, lambda op: op.op in ("Relu", "Neg", "Add"))  # x -> Add -> Shape
    assert not within([x], 2, shape, lambda op: op.op in ("Relu", "Neg"))  # Relu -> Neg -> Shape is 3 ops
    assert within([x], 3, shape, lambda op: op.op in ("Relu", "Neg"))
    assert not within([x], 5, shape, lambda op: False)


def test_up_the_graph_and_the_tensor_an_end_was_reached_by():
    x, shape_out, _ = _chain()
    assert within([shape_out], 3, lambda op, _: op.op == "Relu", lambda op: op.op in ("Shape", "Neg"), up=True)
    assert not within([shape_out], 3, lambda op, _: op.op == "Relu", lambda op: op.op == "Shape", up=True)
    # `ends` sees the tensor it reached the op by: the Add reads x in both slots
    assert within([x], 1, lambda op, t: op.op == "Add" and op.inputs[1] is t, lambda op: False)
