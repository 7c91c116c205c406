"""`set-shape`: fix or free input dims, drop the export's value_info, infer shapes again, prove, write.

    result = set_shape(load_model("model.onnx"), {"audio": parse_named_dims("Bx?")}, Path("dynamic.onnx"))

A dim is a number (fixed), a name (symbolic; inputs that share a name share the size) or `?` (free, unnamed).
Stale `value_info` from the export (shapes traced at one size) makes onnxruntime fail or warn at others, so it
is always dropped; fresh value_info comes from onnx's shape inference on a weightless skeleton, and the graph
outputs' dims from onnxruntime's symbolic shape inference (named dims), else onnx's, else they are freed.
Before writing, onnxruntime runs the result at several sizes: it must run, match the original wherever the
original accepts the same feeds, and produce outputs whose shapes agree with the dims it declares.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from graphfix.analysis.shapes import infer_shapes, symbolic_shapes, value_info_shape
from graphfix.core import values
from graphfix.core.errors import UsageError
from graphfix.io.loading import LoadedModel
from graphfix.io.staging import scratch_dir
from graphfix.surgery import SurgeryResult, output_problems, write_checked
from graphfix.validate import ValidationOptions, probe_sizes, synthesize_inputs
from graphfix.validate.compare import ShapeOracle
from graphfix.validate.inputs import check_shapes, graph_inputs
from graphfix.validate.runner import ModelRunner

Dim = int | str | None


def parse_named_dims(text: str) -> list[Dim]:
    """'1x16000' -> [1, 16000]; 'Bx?' -> ['B', None]; a name keeps its case."""
    try:
        return [values.dim(part, text) for part in (text.split("x") if text not in ("", "scalar") else [])]
    except UsageError:
        raise UsageError(f"bad shape '{text}': expected dims like 1x16000, Bx? or batchxtime (name, number, ?)") \
            from None


def set_shape(loaded: LoadedModel, shapes: dict[str, list[Dim]], output: Path | None,
              options: ValidationOptions | None = None) -> SurgeryResult:
    options = options or ValidationOptions()
    model, changes = reshaped_proto(loaded.proto, shapes)
    summary = "; ".join(changes)

    def check(staged: Path):
        return check_reshaped(loaded, staged, options)

    with scratch_dir() as scratch:
        return write_checked(model, output, loaded, summary, check, Path(scratch))


def reshaped_proto(source: onnx.ModelProto, shapes: dict[str, list[Dim]]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `source` with new input dims, fresh value_info and refreshed output dims."""
    model = onnx.ModelProto()
    model.CopyFrom(source)
    feeds = {vi.name: vi for vi in graph_inputs(model)}
    changes = []
    check_shapes(model, shapes)
    for name, dims in shapes.items():
        for axis, dim in enumerate(dims):
            if isinstance(dim, int) and dim < 1:  # an empty input: no shape to deploy at
                raise UsageError(f"--shape {name}: dim {axis} is {dim}; a fixed size is at least 1 (a name or ? "
                                 "leaves the dim dynamic)")
        tensor_type = feeds[name].type.tensor_type
        before = value_info_shape(feeds[name])
        tensor_type.ClearField("shape")
        shape = tensor_type.shape
        shape.SetInParent()
        for dim in dims:
            _write_dim(shape.dim.add(), dim)
        changes.append(f"{name}: {_text(before)} -> {_text(dims)}")
    del model.graph.value_info[:]
    refresh_shapes(model)
    return model, changes


def _write_dim(target, dim: Dim) -> None:
    if isinstance(dim, int) and dim > 0:
        target.dim_value = dim
    elif isinstance(dim, str) and dim:
        target.dim_param = dim


def _text(dims) -> str:
    if dims is None:
        return "unknown"
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def refresh_shapes(model: onnx.ModelProto) -> None:
    """Fresh value_info (onnx shape inference on the skeleton) and output dims from symbolic inference."""
    declared = {o.name: value_info_shape(o) for o in model.graph.output}
    for out in model.graph.output:  # inference keeps declared output dims: forget them so it decides afresh
        out.type.tensor_type.ClearField("shape")
    inferred = infer_shapes(model)
    outputs = set(declared)
    model.graph.value_info.extend(vi for vi in inferred.graph.value_info if vi.name not in outputs)
    plain = {vi.name: value_info_shape(vi) for vi in inferred.graph.output}
    named = symbolic_shapes(model)
    for out in model.graph.output:
        tensor_type = out.type.tensor_type
        old = declared[out.name]
        new = named.get(out.name) or plain.get(out.name)
        if new is None and old is None:
            continue  # nothing was declared and nothing is known
        if new is None or (old is not None and len(new) != len(old)):
            new = [None] * len(old)  # undecided: free every dim rather than keep a stale one
        tensor_type.ClearField("shape")
        tensor_type.shape.SetInParent()
        for dim in new:
            _write_dim(tensor_type.shape.dim.add(), dim)


def declared_mismatches(model: onnx.ModelProto, outputs: dict[str, np.ndarray], sizes: dict[str, int]) -> list[str]:
    """Output dims the model declares (a number, or an input dim's name) that the run contradicts."""
    declared = {vi.name: value_info_shape(vi) for vi in model.graph.output}
    return ShapeOracle(model, declared, says="the model declares").mismatches(outputs, sizes)


def check_reshaped(loaded: LoadedModel, staged: Path, options: ValidationOptions) -> tuple[list[dict], list[str]]:
    candidate = ModelRunner.from_source(staged, deployed=True)
    if candidate.session is None:
        return [], [f"onnxruntime cannot load the result: {candidate.load_error}"]
    base_dir = loaded.base_dir.resolve() if loaded.base_dir is not None else None
    original = ModelRunner(loaded.proto, base_dir)
    checks, reasons = [], []
    for binding in probe_sizes(candidate.proto, options):
        feeds = synthesize_inputs(candidate.proto, binding, options)
        got = candidate.run(feeds, strict_feeds=True)
        reference = original.run(feeds)
        if not got.ok:
            problems = [f"the result fails: {got.error}"]
        else:
            problems = declared_mismatches(candidate.proto, got.outputs, binding)
            if reference.ok:
                problems += output_problems(reference.outputs, got.outputs, options.rtol, options.atol)
        checks.append({"sizes": binding, "ok": not problems,
                       "original": "ran" if reference.ok else f"failed: {reference.error}", "problems": problems})
        reasons += [f"at sizes {binding}: {p}" for p in problems]
    return checks, reasons
