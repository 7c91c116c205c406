"""Copying parts of ONNX protos without copying their weights."""

from __future__ import annotations

import onnx


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
