"""The graph inputs a caller feeds, and the shapes a user gives them (`--shape`, `--trace-shape`, a configuration's):
refused where they name no such input or another rank. Below `graphfix.validate`: `diagnose --static` checks
`--trace-shape` without importing onnxruntime."""

from __future__ import annotations

import onnx

from graphfix.core.errors import UsageError


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs a caller must feed (initializers that double as inputs excluded)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def check_trace_shapes(model: onnx.ModelProto, options) -> None:
    """`--trace-shape` (`RuleOptions.trace_shapes`) checked as `--shape` is: a typo is no export size. A name may be
    no input of this model where several share the command (`RuleOptions.several`): another may have it."""
    check_shapes(model, options.trace_shapes, "--trace-shape",
                 frozenset(options.trace_shapes) if options.several else frozenset())


def check_shapes(model: onnx.ModelProto, shapes, option: str = "--shape",
                 optional: frozenset[str] = frozenset()) -> None:
    """Refuse a shape (`--shape`, or the configuration's) for a name that is no graph input of `model`, or with
    another number of dims than the input declares: a typo would leave the input at a guessed size, unsaid (and a
    `--trace-shape` so mistyped was silently ignored: helper 104). An `optional` name may be no input of this
    model: one only the configuration gives (its glob matches models with other inputs too), or one of another
    model beside it (`bench model.onnx encoder.onnx --shape tokens=1x8`)."""
    inputs = {vi.name: vi for vi in graph_inputs(model)}
    for name, dims in shapes.items():
        if name not in inputs and name in optional:
            continue
        if name not in inputs:
            raise UsageError(f"{option} {name}: no such graph input (inputs: {', '.join(inputs) or 'none'})")
        declared = inputs[name].type.tensor_type
        if inputs[name].type.WhichOneof("value") == "tensor_type" and declared.HasField("shape") \
                and len(declared.shape.dim) != len(dims):
            raise UsageError(f"{option} {name}: {len(dims)} dims given, the input has rank {len(declared.shape.dim)}")
