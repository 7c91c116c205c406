"""per_model: a reading remembered for the last few models, by identity (a ModelProto is not hashable)."""

from __future__ import annotations

import onnx

from graphfix.core.recent import MODELS, per_model


def test_a_reading_is_remembered_by_identity_for_the_last_few_models():
    calls = []

    @per_model
    def read(model):
        calls.append(model)
        return [model.graph.name]

    models = [onnx.ModelProto(graph=onnx.GraphProto(name=f"g{i}")) for i in range(MODELS + 1)]
    first = read(models[0])
    assert read(models[0]) is first and len(calls) == 1
    equal = onnx.ModelProto(graph=onnx.GraphProto(name="g0"))
    assert read(equal) == first and len(calls) == 2  # an equal model is another model: read again
    for model in models[1:]:
        read(model)
    read(models[0])  # pushed out by MODELS newer ones
    assert len(calls) == 2 + MODELS + 1


def test_a_value_found_on_the_way_is_kept():
    @per_model
    def read(model):
        raise AssertionError("kept: not read")

    model = onnx.ModelProto()
    read.keep(model, "found")
    read.keep(model, "found again")  # once per model
    assert read(model) == "found again"
