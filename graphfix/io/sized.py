"""What a node's constant inputs say about its output: the values a few integer ops pass on, a Constant node's
tensor, and how many elements a node sized by constants (`ConstantOfShape`, `Expand`, `Range`, `Resize`, ...)
makes, read from the constants without making them. `graphfix.io.propagation` bounds what onnx's data
propagation and onnxruntime's loading hold with these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import AttributeProto, numpy_helper

FOLDED = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
          "Mod": lambda a, b: a % b}  # on Python ints: exact, where int64 would wrap


def passed_through(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> onnx.TensorProto | None:
    """A few integers a Reshape, Squeeze, Unsqueeze or Identity passes on from a constant, or that Add, Sub, Mul or
    Mod compute from constants (the TorchScript exporter writes unflatten's Slice bounds as
    `Reshape(Mod(2, 3), [1])` and `Reshape(Add(Mod(2, 3), 1), [1])`), as a vector of those values: their values,
    never their shape (a Reshape of one number may have any rank)."""
    if not node.input or not node.output:
        return None
    if node.op_type in ("Reshape", "Squeeze", "Unsqueeze", "Identity"):
        numbers = _integers(node, 0, constants)
    elif node.op_type in FOLDED and len(node.input) == 2:
        a, b = _integers(node, 0, constants), _integers(node, 1, constants)
        fmod = any(attr.name == "fmod" and attr.i for attr in node.attribute)
        if a is None or b is None or (len(a) != len(b) and 1 not in (len(a), len(b))) or \
                (node.op_type == "Mod" and (fmod or 0 in b)):
            return None
        numbers = [FOLDED[node.op_type](a[i % len(a)], b[i % len(b)]) for i in range(max(len(a), len(b)))]
    else:
        return None
    if numbers is None or any(abs(n) >= 1 << 62 for n in numbers):
        return None
    return numpy_helper.from_array(np.array(numbers, np.int64), node.output[0])


def _integers(node: onnx.NodeProto, index: int, constants: dict[str, onnx.TensorProto]) -> list[int] | None:
    """A constant integer input of a few values (at most 8), as Python ints read from the tensor's own integers;
    None otherwise. Never through floats: 2**61 + 255 - 2**61 is 255, not the 0 that doubles give (helper 65)."""
    tensor = constants.get(node.input[index]) if index < len(node.input) else None
    if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL or elements(tensor.dims) > 8 \
            or tensor.data_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
        return None
    try:
        return [int(n) for n in np.asarray(numpy_helper.to_array(tensor)).reshape(-1)]
    except (ValueError, TypeError):
        return None


def constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node holds (`value`, `value_int(s)`, `value_float(s)`), as onnx's shape inference
    reads it; None for any other node."""
    if node.op_type != "Constant" or len(node.output) != 1 or len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name == "value" and attr.type == AttributeProto.TENSOR:
        return attr.t
    made = {"value_int": (onnx.TensorProto.INT64, [attr.i]), "value_ints": (onnx.TensorProto.INT64, attr.ints),
            "value_float": (onnx.TensorProto.FLOAT, [attr.f]), "value_floats": (onnx.TensorProto.FLOAT, attr.floats)}
    if attr.name not in made:
        return None
    elem, values = made[attr.name]
    dims = [] if attr.name in ("value_int", "value_float") else [len(values)]
    return onnx.helper.make_tensor(node.output[0], elem, dims, values)


MAX_SHAPE_VALUES = 4096  # a shape, scales or pads input longer than this is read as unbounded
# op -> the input (index) whose values size its output, and whether the output also has the first input's elements
SIZED_BY = {"ConstantOfShape": (0, False), "Expand": (1, False), "Tile": (1, True), "CenterCropPad": (1, False),
            "Upsample": (1, True), "OneHot": (1, False)}


def sized_elements(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> float:
    """A lower bound on the elements (or on the length of one axis) of a node's output, computed from constant
    inputs without making them; 0 where its size is not constant. A 0 in a shape counts as 1: a reduction over
    that axis leaves the others, as long. Constants themselves count: a 1-D integer one is propagated whole."""
    if node.op_type == "Constant":
        value = constants.get(node.output[0])
        integer = value is not None and value.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
        return elements(value.dims) if integer and len(value.dims) == 1 else 0
    if node.op_type == "Range":
        return _range_length(node, constants)
    if node.op_type == "Resize":  # sizes (input 3) or scales (input 2, input 1 before opset 11)
        return max(_sized(node, 3, False, constants), _sized(node, 2, True, constants),
                   _sized(node, 1, True, constants))
    if node.op_type == "Pad":  # pads as input 1 (opset 11) or as an attribute: one axis is at least as long
        pads = input_values(node, 1, constants)
        pads = pads if pads is not None else next((list(a.ints) for a in node.attribute if a.name == "pads"), [])
        half = len(pads) // 2
        return max((pads[i] + pads[i + half] for i in range(half)), default=0)
    if node.op_type in SIZED_BY:
        return _sized(node, *SIZED_BY[node.op_type], constants)
    return 0


def _sized(node: onnx.NodeProto, index: int, times_input: bool, constants: dict[str, onnx.TensorProto]) -> float:
    values = input_values(node, index, constants)
    if values is None:
        return 0
    first = constants.get(node.input[0]) if times_input and node.input else None
    return elements(values) * (elements(first.dims) if first is not None else 1)


def input_values(node: onnx.NodeProto, index: int, constants: dict[str, onnx.TensorProto]) -> list[float] | None:
    """The values of a node's constant input, or None (no such input, not constant, stored apart, unreadable).
    One of more than MAX_SHAPE_VALUES is not read: its size is taken as unbounded (no rank is that high; ones
    around a long axis, squeezed away, would hide it)."""
    tensor = constants.get(node.input[index]) if index < len(node.input) else None
    if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None  # stored apart: onnx's numpy_helper would look in the working directory
    if elements(tensor.dims) > MAX_SHAPE_VALUES:
        return [math.inf]
    try:
        return [float(v) for v in np.asarray(numpy_helper.to_array(tensor)).reshape(-1)]
    except (ValueError, TypeError):
        return None


def _range_length(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> float:
    bounds = [input_values(node, index, constants) for index in range(3)]
    if any(b is None or len(b) != 1 for b in bounds):
        return 0
    start, limit, delta = (b[0] for b in bounds)
    return math.inf if delta == 0 else (limit - start) / delta


def elements(dims: Iterable[float]) -> float:
    """The product of `dims`, each at least 1 (a float: 10**300 stays a number)."""
    return math.prod(max(float(d), 1.0) for d in dims)
