"""Probe sizes whose intermediate tensors would exceed the memory budget are skipped with a note, not run."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphfix.validate import ValidationOptions, probe, validate
from graphfix.validate.budget import ENV_BUDGET, NotProbed
from graphfix.validate.footprint import Footprint
from graphfix.validate.probe import SKIPPED_NAME, _inferred_types, with_node_names


def _model(nodes, initializers, x_shape=("B", 4)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), n) for n, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _expand():
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Expand", ["s", "shape"], ["big"]), helper.make_node("Reshape", ["big", "flat"], ["y"])]
    return _model(nodes, {"shape": np.array([1000, 2000], np.int64), "flat": np.array([-1], np.int64)})


def _range():
    nodes = [helper.make_node("Range", ["start", "limit", "delta"], ["big"]),
             helper.make_node("Cast", ["big"], ["y"], to=TensorProto.FLOAT)]
    return _model(nodes, {"start": np.array(0, np.int64), "limit": np.array(3_000_000, np.int64),
                          "delta": np.array(1, np.int64)})


def _constant_of_shape():
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"],
                              value=numpy_helper.from_array(np.array([0], np.int32))),
             helper.make_node("Cast", ["big"], ["y"], to=TensorProto.FLOAT)]
    return _model(nodes, {"shape": np.array([500, 600], np.int64)})


def _tile():
    return _model([helper.make_node("Tile", ["x", "repeats"], ["y"])], {"repeats": np.array([1000, 10], np.int64)},
                  x_shape=(2, 3))


@pytest.mark.parametrize(("make", "tensor", "dims", "nbytes"), [
    (_expand, "big", [1000, 2000], 8_000_000),
    (_range, "big", [3_000_000], 24_000_000),
    (_constant_of_shape, "big", [500, 600], 1_200_000),
    (_tile, "y", [2000, 30], 240_000),
], ids=["expand", "range", "constant-of-shape", "tile"])
def test_constant_targets_are_sized_before_running(make, tensor, dims, nbytes, monkeypatch):
    footprint = Footprint.of(make(), {})  # onnx's inference alone folds the constant targets
    assert footprint.largest({"B": 2}) == (tensor, dims, nbytes)
    monkeypatch.setenv(ENV_BUDGET, str(nbytes))
    footprint.check_sizes({"B": 2})  # at the budget: runs
    monkeypatch.setenv(ENV_BUDGET, str(nbytes - 1))
    with pytest.raises(NotProbed, match=re.escape(f"tensor '{tensor}' {dims} would take {nbytes:,} bytes")):
        footprint.check_sizes({"B": 2})


def _tiled_by_batch() -> onnx.ModelProto:
    """y = Tile(x [B, 4], [1000, 1]): 16,000 bytes per batch row."""
    return _model([helper.make_node("Tile", ["x", "repeats"], ["y"])], {"repeats": np.array([1000, 1], np.int64)})


def test_symbolic_shapes_are_evaluated_at_the_fed_size(monkeypatch):
    model = with_node_names(_tiled_by_batch())
    footprint = Footprint.of(model, _inferred_types(model))
    monkeypatch.setenv(ENV_BUDGET, "40000")
    footprint.check({"x": np.zeros((2, 4), np.float32)})  # 32,000 bytes
    with pytest.raises(NotProbed, match=r"tensor 'y' \[5000, 4\] would take 80,000 bytes"):
        footprint.check({"x": np.zeros((5, 4), np.float32)})


def test_probe_skips_only_the_sizes_over_budget_and_says_so(monkeypatch):
    monkeypatch.setenv(ENV_BUDGET, "40000")
    failures = probe(_tiled_by_batch(), ValidationOptions())
    assert len(failures) == 1 and failures[0].skipped
    finding = failures[0].to_finding()
    assert finding.name == SKIPPED_NAME and finding.severity.value == "error"  # nothing proven there: exit 1
    assert "tensor 'y' [5000, 4] would take 80,000 bytes" in finding.message
    assert finding.message.endswith("the model was not run at these sizes: {'B': 5}")  # B=2 and B=1 ran


def test_terabyte_bomb_is_not_handed_to_onnxruntime():
    model = _model([helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                    helper.make_node("Expand", ["s", "shape"], ["big"]),
                    helper.make_node("Reshape", ["big", "flat"], ["y"])],
                   {"shape": np.array([10**6, 10**6], np.int64), "flat": np.array([-1], np.int64)})
    [failure] = probe(model, ValidationOptions())
    assert failure.skipped and failure.message.startswith("tensor 'big' [1000000, 1000000] would take "
                                                          "4,000,000,000,000 bytes")
    assert "allocate" not in failure.message
    with pytest.raises(NotProbed, match="tensor 'big'"):  # repair's validation refuses it too (exit 1)
        validate(model, model, ValidationOptions())


def test_sizes_skipped_for_one_tensor_are_one_finding_while_free_memory_moves(monkeypatch):
    """The budget is a quarter of the memory available now: another process allocating between two probe sizes
    changed it, and with it the reason each size was skipped for, so one 4 TB tensor made two findings (a flaky CI
    run). Every size of one probe is judged against the budget read at its first check."""
    import graphfix.io.budgets as budgets

    pages = iter(range(1 << 22, 1 << 21, -4096))  # available memory shrinking at every read
    real = budgets.os.sysconf
    monkeypatch.setattr(budgets.os, "sysconf", lambda name: next(pages) if name == "SC_AVPHYS_PAGES" else real(name))
    model = _model([helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                    helper.make_node("Expand", ["s", "shape"], ["big"]),
                    helper.make_node("Reshape", ["big", "flat"], ["y"])],
                   {"shape": np.array([10**6, 10**6], np.int64), "flat": np.array([-1], np.int64)})
    [failure] = probe(model, ValidationOptions())
    assert failure.skipped and failure.message.startswith("tensor 'big' [1000000, 1000000]")


def test_a_tensor_of_thousands_of_digits_of_bytes_is_named_by_its_order_of_magnitude(monkeypatch):
    """5000 symbolic dims of 16: 2**20002 bytes, a number Python will not write out (over 4300 digits)."""
    dims = [f"d{i}" for i in range(5000)]
    footprint = Footprint({"y": (4, [dims])}, _model([helper.make_node("Relu", ["x"], ["y"])], {}))
    monkeypatch.setenv(ENV_BUDGET, "1000")
    with pytest.raises(NotProbed, match=r"tensor 'y' \[16, 16, .* would take about 10\^6021 bytes, over"):
        footprint.check_sizes(dict.fromkeys(dims, 16))


def test_a_size_moved_from_the_shape_given_is_not_tried_past_the_budget(monkeypatch):
    """`--shape` fixes B at 1 and T at 100 (an outer product of 40,000 bytes); the proof also runs B moved to 2
    (80,000 bytes) for evidence the sizes given cannot show (graphfix.validate.sizes.shape_moved), but not past the
    memory budget: the sizes given are the deployed ones, and the moved one would refuse a model they
    prove (exit 1, "not run at these sizes")."""
    model = _model([helper.make_node("Unsqueeze", ["x", "two"], ["column"]),
                    helper.make_node("Unsqueeze", ["x", "one"], ["row"]),
                    helper.make_node("Mul", ["column", "row"], ["y"])],
                   {"one": np.array([1], np.int64), "two": np.array([2], np.int64)}, x_shape=("B", "T"))
    options = ValidationOptions(shapes={"x": (1, 100)})
    monkeypatch.setenv(ENV_BUDGET, "60000")
    assert probe(model, options) == []
    assert validate(model, model, options).sizes == [{"B": 1, "T": 100}]  # not NotProbed (exit 1)
    monkeypatch.setenv(ENV_BUDGET, "80000")  # where it fits, it is run
    assert validate(model, model, options).sizes == [{"B": 1, "T": 100}, {"B": 2, "T": 100}]
