"""Output dims a repair makes follow the input, declared again: the TorchScript exporter declares every axis left
out of `dynamic_axes` with its traced size, so an int there may be an export-time size the repaired graph now
computes (graphfix.pipeline.repair declares it as the repaired graph's symbol before the proof holds the model to
it)."""

from __future__ import annotations

from typing import NamedTuple

import onnx

from graphfix.analysis.broadcast import named


class Declared(NamedTuple):
    """The model with its followed output dims declared, a note per dim changed, and the output shapes symbolic
    shape inference gave the graph (None where it did not run): the proof's shape oracle reads them instead of
    inferring the same graph again (the declarations are no input to that inference; #23, analysis once)."""

    model: onnx.ModelProto
    notes: list[str]
    shapes: dict[str, list | None] | None = None


def declare_followed_outputs(model: onnx.ModelProto, export: dict[str, int],
                             original: onnx.ModelProto | None = None) -> Declared:
    """The model whose output dims that may be export-time sizes (an int above 1: the TorchScript exporter declares
    every axis left out of `dynamic_axes` with its traced size, `T // 3` as much as a class count) or undeclared (a
    fix cleared them) declare the symbol that symbolic shape inference of the repaired graph finds there, where that
    symbol evaluates to the same size at the export size; and a note per dim changed. The declaration then promises
    what the repaired graph does: an int the exporter wrote is no evidence for or against a repair. The notes say
    what the `original` declared there (a fix or onnxsim may have cleared the dim since)."""
    from graphfix.analysis.shapes import symbolic_shapes

    outputs = [o for o in model.graph.output if any(_followable(d) for d in o.type.tensor_type.shape.dim)]
    if not export or not outputs:
        return Declared(model, [])
    inferred = symbolic_shapes(model)
    shapes = {o.name: inferred.get(o.name) for o in model.graph.output}
    changes: dict[str, list[tuple[int, str]]] = {}
    for out in outputs:
        dims = inferred.get(out.name) or []
        declared = out.type.tensor_type.shape.dim
        if len(dims) != len(declared):
            continue
        for axis, (dim, symbol) in enumerate(zip(declared, dims, strict=True)):
            if _followable(dim) and _follows(symbol, dim, export):
                changes.setdefault(out.name, []).append((axis, symbol))
    if not changes:
        return Declared(model, [], shapes)
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    notes, was = [], {o.name: o.type.tensor_type.shape.dim for o in (original or model).graph.output}
    for out in renamed.graph.output:
        for axis, symbol in changes.get(out.name, []):
            dim, old = out.type.tensor_type.shape.dim[axis], was.get(out.name, ())
            old = old[axis] if len(old) > axis else dim
            before = f"{old.dim_value} (an export-time size)" if old.HasField("dim_value") else old.dim_param or \
                "nothing"
            dim.dim_param = symbol  # clears dim_value (a oneof)
            notes.append(f"output '{out.name}' dim {axis} declared {before}; now {symbol}, as the repair computes")
    return Declared(renamed, notes, shapes)


def _followable(dim) -> bool:
    """An output dim that may be declared again: an int that may be an export-time size (a 1 too: `T // 12` traced
    at T = 12, helper 144; a unit axis the repaired graph keeps infers as 1 and is not declared again), or none (no
    name, or one shape inference made up: onnxsim names a dim a fix cleared `unk__0`)."""
    return dim.dim_value > 0 if dim.HasField("dim_value") else not dim.dim_param or not named(dim.dim_param)


def _follows(symbol, dim, export: dict[str, int]) -> bool:
    """A symbol of the input dims that is the declared size at the export size (any size where none is declared)."""
    from graphfix.validate.compare import evaluate_dim

    if not isinstance(symbol, str) or not symbol:
        return False
    value = evaluate_dim(symbol, export)
    return value is not None and (not dim.HasField("dim_value") or value == dim.dim_value)
