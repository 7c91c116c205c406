"""Load-time checks of a model's tensors and types, and onnx's checker: a model that reaches the rules is one they
can read.

onnx's checker (`onnx.checker.check_model`, no shape inference) covers most of ONNX's rules: typed value fields
too short for the dims, UNDEFINED data types, negative dims, attributes whose value field does not match their
type or their operator's schema, sparse tensors with out-of-range or unsorted indices, graph inputs without a
type, tensors produced twice, recursive model-local functions. graphfix checks the rest itself, first, because
the checker lets these through (onnx 1.23) and each one crashed a rule or the runtime probe. Here, the tensors and
types (the graph's structure is `graphfix.io.graph_checks`'):

- data types that are no TensorProto enum (the checker accepts `data_type=99` on an initializer; numpy lookup
  then fails), on tensors and on graph inputs' tensor types;
- `raw_data` longer than the dims need (the checker only refuses shorter), and shorter, with our own message;
  values in more than one field. With these checked, big inline weights reach the checker as typed graph inputs:
  on the file it would parse them all again;
- string tensors: values in `raw_data` and strings that are not UTF-8 (ONNX strings are UTF-8);
- element types onnxruntime refuses when it loads the model (`check_types`): an operator's type parameter bound to
  two types (`Add(float, int64)`, often the work of an unsorted graph), or to one it does not take (a sequence,
  map or string where numbers are needed).

`validate_model` runs graphfix's own checks of both modules, in order; `run_onnx_checker` runs onnx's checker
after them. Each refusal is one line naming the tensor, node or field.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import onnx
from onnx import TensorProto

from graphfix.core.counts import MAX_RANK, bounded_product, spelled
from graphfix.core.errors import InputError
from graphfix.io.budgets import expands_past_budget
from graphfix.io.external_data import has_external_data, is_stub, model_tensors, tensor_nbytes
from graphfix.io.graph_checks import (
    check_acyclic,
    check_local_calls,
    check_names,
    empty_constants_as_tensors,
    every_graph,
    is_sorted,
    sort_nodes,
)
from graphfix.io.protos import lift_initializers

SUB_BYTE_PACKED = {TensorProto.INT4, TensorProto.UINT4, getattr(TensorProto, "FLOAT4E2M1", -1)}
VALID_TYPES = frozenset(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}
MAX_ELEMENTS = 1 << 48  # a tensor beyond this is no weight but a damaged dim
VALUE_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")
HEAVY_BYTES, HEAVY_TENSOR_BYTES = 64 << 20, 1 << 20  # weights the checker gets as typed inputs (see below)


def validate_model(proto: onnx.ModelProto, name: str) -> None:
    """Refuse, with one line, a model the rules and the probe could not read (graphfix's own checks: run them
    before the external-data checks, which need valid data types, and `run_onnx_checker` after)."""
    try:
        empty_constants_as_tensors(proto)
        check_names(proto)
        for where, tensor in model_tensors(proto):
            check_tensor(tensor, where)
        check_graph_inputs(proto.graph)
        for graph, context in every_graph(proto):
            check_acyclic(graph, context)
        check_local_calls(proto)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None


def refuse_unsupported(proto: onnx.ModelProto, name: str) -> None:
    """Valid ONNX graphfix cannot analyse: sparse tensors (onnx-graphsurgeon, shape inference and the extractor
    do not take them; PyTorch exporters never write them). Called after the external-data checks, so an
    attack hidden in a sparse tensor is named as such."""
    for where, _tensor in model_tensors(proto):
        if where.startswith("sparse"):
            raise InputError(f"{name}: {where.removesuffix(' values').removesuffix(' indices')}: sparse tensors "
                             "are not supported; store it dense")


def check_tensor(tensor: TensorProto, where: str) -> None:
    if tensor.data_type not in VALID_TYPES:
        raise InputError(f"{where}: data type {tensor.data_type} is not an ONNX tensor type")
    if len(tensor.dims) > MAX_RANK:  # before anything reads them: their product takes time quadratic in their count
        raise InputError(f"{where}: {len(tensor.dims)} dims, and numpy, which graphfix reads tensors with, holds "
                         f"at most {MAX_RANK}")
    if any(d < 0 for d in tensor.dims):
        raise InputError(f"{where}: negative dim in {list(tensor.dims)}")
    count = bounded_product(tensor.dims, MAX_ELEMENTS)
    if count > MAX_ELEMENTS:
        raise InputError(f"{where}: dims {list(tensor.dims)} ask for more than {spelled(MAX_ELEMENTS)} elements")
    if tensor.data_location == TensorProto.EXTERNAL:
        if tensor.HasField("raw_data") or _typed_values(tensor):
            raise InputError(f"{where}: has both external data and values in the file")
        return  # sizes checked against the file by graphfix.external_data
    fields = [f for f in VALUE_FIELDS if len(getattr(tensor, f))] + ["raw_data"] * tensor.HasField("raw_data")
    if len(fields) > 1:
        raise InputError(f"{where}: values in more than one field ({', '.join(fields)})")
    if tensor.data_type == TensorProto.STRING:
        _check_strings(tensor, where, count)
        return
    _check_typed_count(tensor, where, count)
    if tensor.HasField("raw_data") and len(tensor.raw_data) != tensor_nbytes(tensor):
        type_name = onnx.helper.tensor_dtype_to_string(tensor.data_type).removeprefix("TensorProto.").lower()
        raise InputError(f"{where}: raw_data has {len(tensor.raw_data)} bytes, dims {list(tensor.dims)} of "
                         f"{type_name} need {tensor_nbytes(tensor)}")


def _check_typed_count(tensor: TensorProto, where: str, count: int) -> None:
    """Values kept in a typed field must match the dims exactly (the checker refuses only too few)."""
    for field in VALUE_FIELDS:
        have = len(getattr(tensor, field))
        if not have:
            continue
        complex_pair = tensor.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128)
        need = count * 2 if complex_pair else count
        if tensor.data_type in SUB_BYTE_PACKED and field == "int32_data":
            need = (count + 1) // 2
        if have != need:
            raise InputError(f"{where}: {field} has {have} values, dims {list(tensor.dims)} need {need}")
    if count and not tensor.HasField("raw_data") and not _typed_values(tensor):
        raise InputError(f"{where}: has no values (dims {list(tensor.dims)})")


def _typed_values(tensor: TensorProto) -> bool:
    return any(len(getattr(tensor, f)) for f in VALUE_FIELDS)


def _check_strings(tensor: TensorProto, where: str, count: int) -> None:
    if tensor.HasField("raw_data"):
        raise InputError(f"{where}: a string tensor cannot keep its values in raw_data")
    if len(tensor.string_data) != count:
        raise InputError(f"{where}: {len(tensor.string_data)} strings, dims {list(tensor.dims)} need {count}")
    for index, value in enumerate(tensor.string_data):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{where}: string {index} is not UTF-8") from None


def check_graph_inputs(graph: onnx.GraphProto) -> None:
    """Inputs have a type; tensor inputs a real element type and non-negative dims. Sequences, maps and
    optionals are valid: the probe reports them as inputs it cannot make."""
    for value in graph.input:
        kind = value.type.WhichOneof("value")
        if kind is None:
            raise InputError(f"graph input '{value.name}' has no type")
        if kind != "tensor_type":
            continue
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type not in VALID_TYPES:
            raise InputError(f"graph input '{value.name}': element type {tensor_type.elem_type} is not an ONNX "
                             "tensor type")
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value < 0:
                raise InputError(f"graph input '{value.name}': negative dim {dim.dim_value}")


def check_types(proto: onnx.ModelProto, name: str, lifted: onnx.ModelProto | None = None) -> None:
    """Refuse what onnxruntime refuses to load for its element types: an operator's type parameter bound to two
    types (`Add(float, int64)`, often the work of an unsorted graph, which onnxruntime sorts first) or to a type
    it does not take (a sequence, map or string where numbers are needed). Types come from onnx's type and shape
    inference on the sorted graph without its weights (their types and dims stay: no second copy of gigabytes);
    shapes that do not unify are the rules' and the probe's business, not a load error. Inference inlines every
    function call: where that would make more nodes than the budget (2**30 from a few KB), the graph is checked
    without its functions, each call a node of no schema, as the rules see it. `lifted`: `lift_initializers(proto)`
    made already (for the checker), which this check may change: a second copy of the graph is not made."""
    light = lift_initializers(proto) if lifted is None else lifted
    if expands_past_budget(light):
        del light.functions[:]
    if not is_sorted(light.graph):
        sort_nodes(light.graph)  # quadratic: only for the graphs that need it
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=False)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError):
        return  # what the checker let through and inference cannot read is left to the rules
    graph = inferred.graph
    types = {v.name: v.type for v in (*graph.input, *graph.value_info, *graph.output) if v.type.WhichOneof("value")}
    opsets = {entry.domain or "ai.onnx": entry.version for entry in proto.opset_import}
    for node in graph.node:
        problem = _type_binding(node, types, opsets)
        if problem:
            raise InputError(f"{name}: node '{node.name or node.op_type}' ({node.op_type}): {problem}; onnxruntime "
                             "would not load it")


def _type_binding(node: onnx.NodeProto, types: dict, opsets: dict[str, int]) -> str:
    """'' when the node's input types fit its schema's type parameters, else what does not."""
    domain = node.domain or "ai.onnx"
    signature = _signature(node.op_type, opsets.get(domain, 1), domain)
    if signature is None:
        return ""  # a model-local function or a runtime's own operator: no schema to hold it to
    formals, allowed = signature
    bound: dict[str, str] = {}
    for index, value in enumerate(node.input):
        if not value or not formals or value not in types:
            continue
        param, variadic, homogeneous = formals[min(index, len(formals) - 1)]
        if index >= len(formals) and not variadic:
            continue
        if param not in allowed:
            continue
        actual = _type_string(types[value])
        if actual is None:
            continue
        if actual not in allowed[param]:
            return f"input {index} ('{value}') is {actual}, which type parameter {param} does not take"
        if bound.setdefault(param, actual) != actual and homogeneous:
            return f"type parameter {param} bound to different types ({bound[param]} and {actual})"
    return ""


@functools.cache
def _signature(op_type: str, version: int, domain: str
               ) -> tuple[tuple[tuple[str, bool, bool], ...], dict[str, frozenset[str]]] | None:
    """An operator's formal inputs (type parameter, variadic, homogeneous) and each type parameter's allowed
    types, once per operator and version (a graph has thousands of nodes and a few dozen operators)."""
    try:
        schema = onnx.defs.get_schema(op_type, version, "" if domain == "ai.onnx" else domain)
    except onnx.defs.SchemaError:
        return None
    formals = tuple((f.type_str, f.option == f.option.Variadic, f.is_homogeneous) for f in schema.inputs)
    return formals, {c.type_param_str: frozenset(c.allowed_type_strs) for c in schema.type_constraints}


def _type_string(type_proto: onnx.TypeProto) -> str | None:
    """'tensor(float)', 'seq(tensor(int64))', ...: the words of onnx's type constraints; None when not known."""
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        return TENSOR_TYPE_WORDS.get(type_proto.tensor_type.elem_type)
    if kind in ("sequence_type", "optional_type"):
        inner = _type_string(getattr(type_proto, kind).elem_type)
        return None if inner is None else f"{'seq' if kind == 'sequence_type' else 'optional'}({inner})"
    if kind == "map_type":
        inner = _type_string(type_proto.map_type.value_type)
        key = onnx.helper.tensor_dtype_to_string(type_proto.map_type.key_type).removeprefix("TensorProto.").lower()
        return None if inner is None else f"map({key},{inner})"
    return None


TENSOR_TYPE_WORDS = {elem: f"tensor({onnx.helper.tensor_dtype_to_string(elem).removeprefix('TensorProto.').lower()})"
                     for elem in VALID_TYPES}

# The checker's words for external data it will not read; graphfix's own checks of locations, links and lengths
# ran first, and accept what the checker cannot tell from an attack (a Hugging Face hub cache links its files).
EXTERNAL_DATA_COMPLAINT = re.compile(r"Data of TensorProto \( tensor name: .*\) should be stored in .*, but")


def run_onnx_checker(proto: onnx.ModelProto, name: str, path: Path | None) -> None:
    """onnx's checker, on the file when there is one: it then resolves external data against the model's folder,
    never the working directory (external data is checked by graphfix first). An in-memory model with external
    data is checked without its initializers, which would otherwise be looked up in the working directory."""
    given = proto
    if proto.ir_version < 4:  # the checker's own rule, which lifting initializers (a light model's stubs) hides
        inputs = {i.name for i in proto.graph.input}
        if missing := [t.name for t in proto.graph.initializer if t.name not in inputs]:
            raise InputError(f"{name}: {missing[0]} in initializer but not in graph input")
    unshaped, dangling = _unshaped_io(proto), _dangling_outputs(proto)
    lifted = None  # the checker's copy, where it is exactly what check_types makes of the model
    if unshaped or dangling or (path is None and has_external_data(proto)):
        proto, path = lift_initializers(proto), None
        lifted = None if unshaped or dangling else proto
        for value in (*proto.graph.input, *proto.graph.output):
            if value.name in unshaped:  # unknown rank: valid for onnxruntime, which the checker does not allow
                value.type.tensor_type.shape.SetInParent()
        kept = [v for v in proto.graph.output if v.name not in dangling]  # GF001's finding, not a load error
        del proto.graph.output[:]
        proto.graph.output.extend(kept)
    elif heavy := _heavy_initializers(proto):
        # On the file, the checker would parse every weight again (0.9 s on BERT-base) for checks graphfix has
        # run already (check_tensor): it gets the graph with those weights as typed inputs.
        proto, path = lift_initializers(proto, heavy), None
    try:
        onnx.checker.check_model(str(path) if path is not None else proto)
    except onnx.checker.ValidationError as exc:
        text = " ".join(str(exc).split())
        # graphfix checked external data already (io/external_data.py), links into a hub cache included
        if not EXTERNAL_DATA_COMPLAINT.search(text):
            if "topologically sorted" not in text:
                raise InputError(f"{name}: {_checker_line(text)}") from None
            _check_unsorted(proto, name)
    except (ValueError, RuntimeError, OSError) as exc:
        raise InputError(f"{name}: {_checker_line(' '.join(str(exc).split()))}") from None
    check_types(given, name, lifted)


def _check_unsorted(proto: onnx.ModelProto, name: str) -> None:
    """The checker stops at an unsorted (acyclic, checked above) graph: run it again on a sorted copy. A name
    nothing produces is then what it reports."""
    light = lift_initializers(proto)
    sort_nodes(light.graph)
    try:
        onnx.checker.check_model(light)
    except onnx.checker.ValidationError as exc:
        text = " ".join(str(exc).split())
        if "topologically sorted" in text:
            text = f"a node reads a tensor that nothing produces ({_checker_line(text)})"
        raise InputError(f"{name}: {_checker_line(text)}") from None


def _dangling_outputs(proto: onnx.ModelProto) -> set[str]:
    """Graph outputs nothing produces: a truncated export, which GF001 reports (the checker refuses it)."""
    produced = {name for node in proto.graph.node for name in node.output}
    produced |= {v.name for v in proto.graph.input} | {t.name for t in proto.graph.initializer}
    return {v.name for v in proto.graph.output} - produced


def _unshaped_io(proto: onnx.ModelProto) -> set[str]:
    return {v.name for v in (*proto.graph.input, *proto.graph.output)
            if v.type.HasField("tensor_type") and not v.type.tensor_type.HasField("shape")}


def _heavy_initializers(proto: onnx.ModelProto) -> set[str]:
    """The stubs of a model parsed light (graphfix.io.mapped: their bytes are in the file, checked by the walk),
    and with at least HEAVY_BYTES of inline weights (IR >= 4, where initializers need not be graph inputs): the
    names of the external initializers and of the inline ones of at least HEAVY_TENSOR_BYTES. Sizes come from
    the dims, which `check_tensor` matched to the values (reading `raw_data` would copy it)."""
    stubs = {t.name for t in proto.graph.initializer if is_stub(t)}
    if proto.ir_version < 4:
        return stubs
    inline = {t.name: tensor_nbytes(t) for t in proto.graph.initializer if t.data_location != TensorProto.EXTERNAL}
    if sum(inline.values()) < HEAVY_BYTES:
        return stubs
    return (stubs | {t.name for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL}
            | {name for name, size in inline.items() if size >= HEAVY_TENSOR_BYTES})


def _checker_line(text: str) -> str:
    return text.replace("==> Context: ", "(").rstrip() + (")" if "==> Context: " in text else "")
