"""graphfix.exporting.differential: constants that move between traces, fitted as products of the sizes, and
computed from Shape ops; and the reasons it declines (a branch on the size, a table that changes shape, an entry
that is no product of the sizes). Hand-built graphs; tests/frontends/test_patch_grid_ambiguity.py exports real
modules through graphfix.export."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx
from conftest import run
from onnx import TensorProto, helper, numpy_helper

from graphfix.exporting.differential import Fitted, computed, dynamic_dims, moved_constants


def traced(*constants: list[int], ops: str = "Reshape") -> onnx.ModelProto:
    """x [B, H] reshaped to the first constant (a shape vector), as a trace at some size would write it."""
    nodes = [helper.make_node("Constant", [], [f"c{i}"], value=numpy_helper.from_array(np.array(c, np.int64)))
             for i, c in enumerate(constants)]
    nodes.append(helper.make_node(ops, ["x", "c0"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "H"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_moved_entry_is_fitted_and_computed_from_the_sizes():
    """[B*H/2, 2] traced at B=2, H=8: [8, 2]; B doubled: [16, 2]; H doubled: [16, 2]."""
    base = traced([8, 2])
    moved = moved_constants(base, {"B": traced([16, 2]), "H": traced([16, 2])}, {"B": 2, "H": 8})
    assert [m.entries for m in moved] == [(Fitted(0, Fraction(1, 2), {"B": 1, "H": 1}),)]
    model = computed(base, moved, dynamic_dims(base))
    for b, h in ((1, 6), (3, 10), (2, 8)):
        x = np.arange(b * h, dtype=np.float32).reshape(b, h)
        assert run(model, {"x": x})[0].shape == (b * h // 2, 2)


def test_what_the_traces_do_not_settle_is_declined_with_a_reason():
    sizes = {"B": 2, "H": 8}
    same = {"B": traced([8, 2]), "H": traced([8, 2])}
    assert moved_constants(traced([8, 2]), same, sizes) == []  # nothing moves: nothing to compute
    assert "other ops" in moved_constants(traced([8, 2]), {**same, "H": traced([8, 2], ops="Expand")}, sizes)
    assert "changes its shape" in moved_constants(traced([8, 2]), {**same, "H": traced([8, 2, 1])}, sizes)
    # H - 1 at H = 8 is 7, at 16 it is 15: no product of the sizes
    assert "not a product" in moved_constants(traced([7, 2]), {"B": traced([7, 2]), "H": traced([15, 2])}, sizes)
    assert "is 0" in moved_constants(traced([0, 2]), {"B": traced([0, 2]), "H": traced([3, 2])}, sizes)
