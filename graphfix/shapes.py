"""Shape information for rules: onnx's shape inference (fast, C++) and onnxruntime's symbolic one (named dims)."""

from __future__ import annotations

import logging

import onnx

log = logging.getLogger(__name__)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with fresh value_info. Stale value_info from the export is dropped first, since it is a known
    source of wrong shapes; on failure the model is returned without intermediate shapes."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    del stripped.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(stripped, strict_mode=False, data_prop=True)
    except Exception as exc:  # shape inference rejects some valid-to-run models; rules then see fewer shapes
        log.debug("onnx shape inference failed: %s", exc)
        return stripped


def symbolic_shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Tensor name -> shape with symbolic dim names, from onnxruntime.tools.symbolic_shape_infer; {} on failure."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    except Exception as exc:
        log.debug("symbolic shape inference failed: %s", exc)
        return {}
    if inferred is None:
        return {}
    graph = inferred.graph
    return {vi.name: value_info_shape(vi) for vi in (*graph.input, *graph.value_info, *graph.output)}


def value_info_shape(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    tensor_type = vi.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param if d.HasField("dim_param") else None)
        for d in tensor_type.shape.dim
    ]
