"""Copying parts of ONNX protos without copying their weights."""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphfix.core.recent import per_model


def lift_initializers(model: onnx.ModelProto, names: Collection[str] | None = None) -> onnx.ModelProto:
    """A copy of `model` whose named initializers (all of them when `names` is None) are graph inputs of the same
    name, type and shape, without data: the graph's structure for a tool that needs no weights (onnx's checker,
    onnxsim). An initializer that is a graph input already (IR < 4) keeps that input, once."""
    light = copy_without_initializers(model)
    lifted = [t for t in model.graph.initializer if names is None or t.name in names]
    light.graph.initializer.extend(t for t in model.graph.initializer if names is not None and t.name not in names)
    inputs = {i.name for i in light.graph.input}
    light.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                             for t in lifted if t.name not in inputs)
    return light


def copy_without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose graph has no initializers: the initializers' bytes may be gigabytes."""
    light = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            copy_field(light, field, value)
    for field, value in model.graph.ListFields():
        if field.name != "initializer":
            copy_field(light.graph, field, value)
    return light


def copy_field(target, field, value) -> None:
    """Set one field (from `message.ListFields()`) on `target`."""
    if hasattr(value, "extend"):  # repeated field
        getattr(target, field.name).extend(value)
    elif hasattr(value, "CopyFrom"):  # message field
        getattr(target, field.name).CopyFrom(value)
    else:
        setattr(target, field.name, value)


def initializers_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model`, where its IR version is below 4, with every initializer of its graph declared as a graph input too
    (IR 3 requires it; onnx-graphsurgeon and onnxsim write IR 4's form): in place."""
    if model.ir_version >= 4:
        return model
    inputs = {i.name for i in model.graph.input}
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                             for t in model.graph.initializer if t.name not in inputs)
    return model


@per_model  # the probe's limit, thresholds, hint and domain each read them at every probe_sizes call of a proof
def constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Small initializers and Constant-node values by tensor name (external tensors are not read)."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if _small_inline(t)}
    for node in model.graph.node:
        if node.op_type != "Constant":
            continue
        value = next((a for a in node.attribute if a.name == "value"), None)
        if value is not None and _small_inline(value.t):
            values[node.output[0]] = numpy_helper.to_array(value.t)
    return values


def _small_inline(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location != onnx.TensorProto.EXTERNAL and math.prod(tensor.dims) <= 64
