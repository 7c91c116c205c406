"""Shape information for rules: onnx's shape inference (fast, C++) and onnxruntime's symbolic one (named dims)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import onnx

from graphfix.io.budgets import data_prop_allowed
from graphfix.io.external_data import tensor_nbytes
from graphfix.io.weights import stub

log = logging.getLogger(__name__)


SMALL_TENSOR_BYTES = 4096  # shape-carrying constants are small; their values feed data propagation


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model without large weights and without the export's value_info.

    Large initializers become external-data stubs with their name, type and dims, so that shape inference and
    rules see them but no weight bytes are copied. Stale value_info from the export is a known source of wrong
    shapes, so it is dropped and inferred again.
    """
    light = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(light, name, getattr(model, name))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    source, graph = model.graph, light.graph
    graph.name = source.name
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.sparse_initializer.extend(source.sparse_initializer)
    for tensor in source.initializer:
        small = tensor.data_location == onnx.TensorProto.EXTERNAL or tensor_nbytes(tensor) <= SMALL_TENSOR_BYTES
        graph.initializer.append(tensor if small else stub(tensor))
    return light


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The skeleton of the model with fresh value_info; without intermediate shapes if inference fails."""
    light = skeleton(model)
    try:
        return onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=data_prop_allowed(light))
    except Exception as exc:  # shape inference rejects some valid-to-run models; rules then see fewer shapes
        log.debug("onnx shape inference failed: %s", exc)
        return light


def symbolic_shapes(model: onnx.ModelProto, *, merge: bool = True) -> dict[str, list[int | str | None]]:
    """Tensor name -> shape with symbolic dim names, from onnxruntime's symbolic shape inference; {} on failure.

    `merge=True` (auto_merge) lets a dynamic dim be merged with a constant it meets, which reveals export-time
    sizes but rewrites dims on a broken graph; `merge=False` keeps the names and returns what was inferred
    before inference stopped. Unlike the library's `infer_shapes`, an incomplete run neither raises nor writes
    `sym_shape_infer_temp.onnx` into the working directory.
    """
    inferred = symbolic_model(model, merge=merge)
    if inferred is None:
        return {}
    graph = inferred.graph
    return {vi.name: value_info_shape(vi) for vi in (*graph.value_info, *graph.output, *graph.input)}


def symbolic_model(model: onnx.ModelProto, *, merge: bool = True, complete: bool = False) -> onnx.ModelProto | None:
    """The model with onnxruntime's symbolic value_info (None on failure, or with `complete` when some shape
    stays unknown, as the library's `infer_shapes` does). Never writes a file: the library's `infer_shapes` saves
    `sym_shape_infer_temp.onnx` and its data into the working directory when it stops."""
    ort_log = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = ort_log.level
    ort_log.setLevel(logging.ERROR)  # it warns about every mismatch the rules are about to report
    try:
        inference = _symbolic_shape_infer().SymbolicShapeInference(2**31 - 1, merge, True, 0)
        inference._preprocess(model)
        inferred_all = False
        while inference.run_:
            inferred_all = inference._infer_impl()
        inference._update_output_from_vi()
        return inference.out_mp_ if inferred_all or not complete else None
    except Exception as exc:  # it does not know every op; rules then fall back to onnx's shapes
        log.debug("symbolic shape inference failed: %s", exc)
        return None
    finally:
        ort_log.setLevel(level)


@functools.cache
def _symbolic_shape_infer():
    """onnxruntime.tools.symbolic_shape_infer, loaded from its file: importing it as a submodule runs
    onnxruntime/tools/__init__.py, which imports torch (3 s) when torch is installed."""
    import importlib.util

    package = importlib.util.find_spec("onnxruntime")
    path = Path(package.submodule_search_locations[0]) / "tools" / "symbolic_shape_infer.py"
    spec = importlib.util.spec_from_file_location("graphfix._ort_symbolic_shape_infer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def value_info_shape(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    tensor_type = vi.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param if d.HasField("dim_param") else None)
        for d in tensor_type.shape.dim
    ]
