"""What one trace's constants say, by where they are read: the numbers refit compares across traces.

Two kinds of constant can follow the input's size:

- a size vector, an integer constant of at most MAX_VECTOR elements (a Reshape's shape, a Slice's end): its values
  are the numbers that move;
- a table the trace filled at the size it saw: `torch.ones(int(T), 8)`, `torch.arange(int(T))`, a mask of zeros.
  Its shape is the numbers that move, and it is rebuilt only when its values are a family the shape alone
  determines: every element equal (`uniform`), or `start, start + step, ...` along its one axis longer than 1
  (`arange`).

A constant is read at a site, (node index, input index) in the main graph: the same position in two traces of one
structure (the same ops, in order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

MAX_VECTOR = 64  # integer constants longer than this are tables, not size vectors
MAX_TABLE = 1 << 20  # tables larger than this are not read (a weight, not a size)

Site = tuple[int, int]  # (node index, input index) of a constant read by a node of the main graph


@dataclass(frozen=True)
class Reading:
    """One constant in one trace: its shape and element type, its values if it is a size vector, and its family if
    it is a table its shape determines."""

    shape: tuple[int, ...]
    dtype: np.dtype
    values: tuple[int, ...] | None  # a size vector's values
    family: tuple | None  # ("uniform", value) or ("arange", start, step)

    def numbers(self, kind: str) -> tuple[int, ...]:
        """What may move: a size vector's values, or a table's shape."""
        return self.values if kind == "vector" else self.shape


def structure(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """The main graph's ops and node names, in order: two traces whose structures differ took different paths."""
    return [(node.op_type, node.name) for node in model.graph.node]


def attributes(model: onnx.ModelProto) -> list[tuple]:
    """Each main-graph node's attributes but subgraphs (and a Constant's value, which `readings` reads), as
    comparable values: an attribute that moves between traces is a number no rebuilt input can carry."""
    return [tuple((a.name, _attribute_value(a)) for a in node.attribute
                  if a.type not in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                  and not (node.op_type == "Constant" and a.name.startswith("value")))
            for node in model.graph.node]


def _attribute_value(attribute: onnx.AttributeProto):
    if attribute.type == onnx.AttributeProto.TENSOR:
        return attribute.t.SerializeToString()
    value = onnx.helper.get_attribute_value(attribute)
    return tuple(value) if isinstance(value, list) else value


def readings(model: onnx.ModelProto) -> dict[Site, Reading]:
    """Each constant a node of the main graph reads (an initializer or a Constant node's output) that is a size
    vector or a table of a family, by site."""
    arrays: dict[str, np.ndarray] = {}
    for tensor in model.graph.initializer:
        if not tensor.data_location and _elements(tensor.dims) <= MAX_TABLE:
            arrays[tensor.name] = tensor
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.output) == 1:
            value = _constant_value(node)
            if value is not None:
                arrays[node.output[0]] = value
    found: dict[str, Reading | None] = {}
    sites = {}
    for i, node in enumerate(model.graph.node):
        for j, name in enumerate(node.input):
            if name in arrays:
                if name not in found:
                    found[name] = _reading(arrays[name])
                if found[name] is not None:
                    sites[i, j] = found[name]
    return sites


def _reading(value) -> Reading | None:
    array = numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value
    if array.dtype.kind not in "biuf":
        return None
    integer = array.dtype.kind in "iu" and array.dtype.itemsize >= 4
    vector = tuple(int(v) for v in array.ravel()) if integer and array.size <= MAX_VECTOR else None
    return Reading(tuple(array.shape), array.dtype, vector, _family(array))


def _family(array: np.ndarray) -> tuple | None:
    flat = array.ravel()
    if flat.size == 0:
        return None
    if (flat == flat[0]).all():
        return ("uniform", flat[0].item())
    if sum(d != 1 for d in array.shape) == 1 and array.dtype.kind in "iuf":  # one axis, the others 1
        step = flat[1] - flat[0]
        expected = flat[0] + step * np.arange(flat.size, dtype=array.dtype)
        exact = array.dtype.kind != "f" or np.allclose(flat, expected, rtol=1e-6, atol=1e-6)
        if exact and (array.dtype.kind == "f" or np.array_equal(flat, expected)):
            return ("arange", flat[0].item(), step.item())
    return None


def _elements(dims) -> int:
    count = 1
    for d in dims:
        count *= d
    return count


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | np.ndarray | None:
    for attribute in node.attribute:
        if attribute.name == "value" and not attribute.t.data_location and _elements(attribute.t.dims) <= MAX_TABLE:
            return attribute.t
        if attribute.name == "value_int":
            return np.array(attribute.i, dtype=np.int64)
        if attribute.name == "value_ints" and len(attribute.ints) <= MAX_TABLE:
            return np.array(list(attribute.ints), dtype=np.int64)
        if attribute.name == "value_float":
            return np.array(attribute.f, dtype=np.float32)
        if attribute.name == "value_floats" and len(attribute.floats) <= MAX_TABLE:
            return np.array(list(attribute.floats), dtype=np.float32)
    return None


def same_table(export: Reading, got: Reading) -> bool:
    """Whether `got` is the table `export` regrown: the same family and type (an empty table is any; a
    one-element table is uniform, and then its value must be the arange's start)."""
    if got.dtype != export.dtype:
        return False
    if math.prod(got.shape) == 0:  # no element to tell a family by
        return True
    if math.prod(got.shape) == 1 and got.family is not None and export.family[0] == "arange":
        return got.family[1] == export.family[1]
    return got.family == export.family
