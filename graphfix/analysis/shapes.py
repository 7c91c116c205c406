"""Shape information for rules: onnx's shape inference (fast, C++) and onnxruntime's symbolic one (named dims)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from graphfix.core.budget import NODE_SECONDS, OutOfTime, Watchdog, shape_seconds
from graphfix.core.nocode import CodeFromText, no_code_from_text
from graphfix.io.budgets import expands_past_budget
from graphfix.io.external_data import tensor_nbytes, without_external_values
from graphfix.io.propagation import MAX_PROPAGATED_ELEMENTS, data_prop_allowed
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
    graph.metadata_props.extend(source.metadata_props)  # the exporter's record (graphfix.io.torch_ranges)
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.sparse_initializer.extend(source.sparse_initializer)
    for tensor in source.initializer:
        small = tensor.data_location == onnx.TensorProto.EXTERNAL or tensor_nbytes(tensor) <= SMALL_TENSOR_BYTES
        graph.initializer.append(tensor if small else stub(tensor))
    return light


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The skeleton of the model with fresh value_info; without intermediate shapes if inference fails. Bounded:
    functions that would expand past the node budget are left out (their calls get no shapes), and data
    propagation is off where a constant could make it allocate without bound (`graphfix.io.propagation`)."""
    light = skeleton(model)
    if expands_past_budget(light):
        del light.functions[:]
    data_prop = data_prop_allowed(light)
    if not data_prop:
        log.debug("onnx data propagation off: a node is sized past %d elements", MAX_PROPAGATED_ELEMENTS)
    try:
        return onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=data_prop)
    except Exception as exc:  # shape inference rejects some valid-to-run models; rules then see fewer shapes
        log.debug("onnx shape inference failed: %s", exc)
        return light


@dataclass
class SymbolicShapes:
    """What onnxruntime's symbolic shape inference found within its time: tensor name -> shape, and why it is
    incomplete (empty when it finished). A node that ran past its own time got fresh dims and inference went on;
    when the whole time ran out, tensors past that point have no shape."""

    value_info: dict[str, onnx.ValueInfoProto] = field(default_factory=dict)
    incomplete: list[str] = field(default_factory=list)

    @property
    def shapes(self) -> dict[str, list[int | str | None]]:
        return {name: value_info_shape(vi) for name, vi in self.value_info.items()}


def symbolic_shapes(model: onnx.ModelProto, *, merge: bool = True) -> dict[str, list[int | str | None]]:
    """Tensor name -> shape with symbolic dim names (see `symbolic_inference`); {} on failure."""
    return symbolic_inference(model, merge=merge).shapes


def symbolic_inference(model: onnx.ModelProto, *, merge: bool = True, seconds: float | None = None,
                       guess_rank: bool = True) -> SymbolicShapes:
    """onnxruntime's symbolic shape inference, time bounded (`shape_seconds()` for the whole graph,
    `NODE_SECONDS` per node); returns what it inferred even when it stopped early.

    `merge=True` (auto_merge) lets a dynamic dim be merged with a constant it meets, which reveals export-time
    sizes but rewrites dims on a broken graph; `merge=False` keeps the names and returns what was inferred
    before inference stopped. Unlike the library's `infer_shapes`, an incomplete run neither raises nor writes
    `sym_shape_infer_temp.onnx` into the working directory.
    """
    if not data_prop_allowed(model):  # it propagates shape values as Python lists, unbounded (helper 55: 10**9)
        return SymbolicShapes(incomplete=[f"symbolic shape inference skipped: a node would hold more than "
                                          f"{MAX_PROPAGATED_ELEMENTS} shape values (graphfix.io.propagation)"])
    try:  # it reads initializers with onnx's numpy_helper, which resolves external data against the working folder
        model, lifted = without_external_values(model)
    except ValueError as exc:
        return SymbolicShapes(incomplete=[f"symbolic shape inference skipped: {exc}"])
    seconds = shape_seconds() if seconds is None else seconds
    ort_log = _symbolic_shape_infer().logger  # its module's own (loaded under graphfix's name, see below)
    level = ort_log.level
    ort_log.setLevel(logging.ERROR)  # it warns about every mismatch the rules are about to report
    result = SymbolicShapes()
    inference = _symbolic_shape_infer().SymbolicShapeInference(2**31 - 1, merge, guess_rank, 0)
    _before_the_guard()
    try:
        with Watchdog(seconds) as dog, no_code_from_text():  # it hands model values to sympy, which runs text
            inference.dispatcher_ = {op: _bounded(inference, dog, handler, result)
                                     for op, handler in inference.dispatcher_.items()}
            inference._preprocess(model)
            while inference.run_:
                inference._infer_impl()
    except OutOfTime:
        result.incomplete.append(f"symbolic shape inference ran out of its {seconds:g} s "
                                 f"(GRAPHFIX_SHAPE_SECONDS); tensors past that point have no inferred shape")
    except CodeFromText as exc:  # the model's text reached sympy's parser: nothing of it is trusted
        return SymbolicShapes(incomplete=[f"symbolic shape inference stopped: {exc}"])
    except Exception as exc:  # it does not know every op; rules then fall back to onnx's shapes
        log.debug("symbolic shape inference failed: %s", exc)
        return SymbolicShapes(incomplete=result.incomplete)
    finally:
        ort_log.setLevel(level)
    if not hasattr(inference, "out_mp_"):
        return result
    inference._update_output_from_vi()
    graph = inference.out_mp_.graph
    result.value_info = {vi.name: vi for vi in (*graph.value_info, *graph.output, *graph.input)
                         if vi.name not in lifted}
    return result


def _before_the_guard() -> None:
    """Import what sympy imports on first use inside inference and builds from its own text: `simplify` imports
    `sympy.physics.units`, whose module code sympifies its unit names (`Prefix('yotta', ...)` parses 'yotta'). Inside
    `no_code_from_text` that compile is refused, and a fresh process lost every shape inferred past a Slice that a
    process which had imported it before kept (helper 97): 0.1 s, once per process."""
    import sympy.physics.units  # noqa: F401


def _bounded(inference, dog: Watchdog, handler, result: SymbolicShapes):
    """The node handler, stopped after NODE_SECONDS: the node's outputs then get fresh symbolic dims."""

    def run(node: onnx.NodeProto) -> None:
        note = (f"{node.op_type} node '{node.name}' took over {NODE_SECONDS:g} s in symbolic shape inference: "
                "its outputs got new dim names")
        if note in result.incomplete:  # inference restarts after each merge: do not pay for the node again
            _fresh_dims(inference, node)
            return
        try:
            with dog.step(NODE_SECONDS):
                handler(node)
        except OutOfTime:
            if dog.expired:
                raise
            _fresh_dims(inference, node)
            result.incomplete.append(note)

    return run


def _fresh_dims(inference, node: onnx.NodeProto) -> None:
    module = _symbolic_shape_infer()
    for index, name in enumerate(node.output):
        vi = inference.known_vi_.get(name)
        if not name or vi is None:
            continue
        shape = value_info_shape(vi)
        rank = len(shape) if shape else inference._get_shape_rank(node, 0)
        elem = vi.type.tensor_type.elem_type or inference.known_vi_[node.input[0]].type.tensor_type.elem_type
        dims = module.get_shape_from_sympy_shape(inference._new_symbolic_shape(rank, node, index))
        vi.CopyFrom(onnx.helper.make_tensor_value_info(name, elem, dims))


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
