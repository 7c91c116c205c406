"""Choosing symbolic-dim sizes and synthesising graph inputs for them, deterministically.

A binding maps every symbolic dim name to a size. Dims without a name (`?`, -1) are named `<input>:<axis>` so
they get a size too. The first binding is the export-time size (from `trace_sizes`, else a guess from the
graph's baked shape constants, else a default); the others are sizes an exporter is unlikely to have baked.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphfix.validate.budget import check_input_bytes, check_input_kind

BATCH_LIKE = re.compile(r"batch|^b$|^n$|^bs$|num_|^N$", re.IGNORECASE)
LENGTH_LIKE = re.compile(r"len", re.IGNORECASE)
MASK_LIKE = re.compile(r"mask", re.IGNORECASE)
DEFAULT_BATCH = 2
DEFAULT_OTHER = 12
MAX_HINT = 512  # baked constants above this are not taken as an export size
SHAPE_OPS = {"Reshape", "Expand", "Tile", "ConstantOfShape", "Slice", "Range"}


@dataclass
class ValidationOptions:
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)  # input -> dims (None = symbolic)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # input -> user values
    trace_sizes: dict[str, int] = field(default_factory=dict)  # symbolic dim -> export-time size
    num_sizes: int = 3  # export size + at least two others
    rtol: float = 1e-3
    atol: float = 1e-4


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs a caller must feed (initializers that double as inputs excluded)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def dim_names(vi: onnx.ValueInfoProto) -> list[str | int]:
    """Each dim of an input: its size when fixed, else its symbolic name (`<input>:<axis>` when unnamed)."""
    dims = []
    for axis, d in enumerate(vi.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(d.dim_value)
        else:
            dims.append(d.dim_param or f"{vi.name}:{axis}")
    return dims


def probe_sizes(model: onnx.ModelProto, options: ValidationOptions) -> list[dict[str, int]]:
    """Bindings of every symbolic dim: the export size first, then `num_sizes - 1` others."""
    forced = _forced_sizes(model, options)
    export = _export_sizes(model, options, forced)
    if not export:
        return [{}]
    bindings = [export]
    for step in range(1, max(options.num_sizes, 1) + 8):
        if len(bindings) >= max(options.num_sizes, 1):
            break
        other = {name: forced.get(name, _other_size(size, step)) for name, size in export.items()}
        if other not in bindings:
            bindings.append(other)
    return bindings


def _other_size(export_size: int, step: int) -> int:
    """Sizes unlike the export size: odd, and neither multiples nor divisors of it where possible."""
    if step == 1:
        return export_size + 3
    if step == 2:
        return 2 * export_size + 3  # + 3, not + 1: a batch of 2 would repeat step 1's 5
    return export_size + 2 * step + 1


def _forced_sizes(model: onnx.ModelProto, options: ValidationOptions) -> dict[str, int]:
    """Dims fixed by the user: the shapes of given input values and --shape entries."""
    forced: dict[str, int] = {}
    for vi in graph_inputs(model):
        names = dim_names(vi)
        given = options.inputs.get(vi.name)
        fixed = given.shape if given is not None else options.shapes.get(vi.name)
        for name, size in zip(names, fixed or (), strict=False):
            if isinstance(name, str) and size is not None:
                forced[name] = int(size)
    return forced


def _export_sizes(model: onnx.ModelProto, options: ValidationOptions, forced: dict[str, int]) -> dict[str, int]:
    hint = _baked_size_hint(model)
    sizes: dict[str, int] = {}
    for vi in graph_inputs(model):
        for axis, name in enumerate(dim_names(vi)):
            if not isinstance(name, str) or name in sizes:
                continue
            if name in forced:
                sizes[name] = forced[name]
            elif name in options.trace_sizes:
                sizes[name] = options.trace_sizes[name]
            elif axis == 0 or BATCH_LIKE.search(name):
                sizes[name] = DEFAULT_BATCH
            else:
                sizes[name] = hint or DEFAULT_OTHER
    return sizes


def _baked_size_hint(model: onnx.ModelProto) -> int | None:
    """The most frequent size > 1 in constants feeding shape ops: likely a trace-time length."""
    constants = _constant_values(model)
    counts: Counter[int] = Counter()
    for node in model.graph.node:
        if node.op_type not in SHAPE_OPS:
            continue
        for name in node.input[1:]:
            values = constants.get(name)
            if values is not None and values.dtype.kind == "i" and values.size <= 8:
                counts.update(int(v) for v in values.ravel() if 1 < v <= MAX_HINT)
    return counts.most_common(1)[0][0] if counts else None


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Small initializers and Constant-node values by tensor name (external tensors are not read)."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if _small_inline(t)}
    for node in model.graph.node:
        tensor = _constant_tensor(node)
        if tensor is not None and _small_inline(tensor):
            values[node.output[0]] = numpy_helper.to_array(tensor)
    return values


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor of a `Constant` node's `value` attribute, else None."""
    if node.op_type != "Constant":
        return None
    value = next((a for a in node.attribute if a.name == "value"), None)
    return value.t if value is not None else None


def _small_inline(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location != onnx.TensorProto.EXTERNAL and int(np.prod(tensor.dims or [1])) <= 64


def synthesize_inputs(
    model: onnx.ModelProto, sizes: dict[str, int], options: ValidationOptions
) -> dict[str, np.ndarray]:
    """A value for every graph input at the binding `sizes`; user values override; seeded per input, size."""
    vocab = _vocabulary_sizes(model)
    time_dim = max((v for k, v in sizes.items() if not BATCH_LIKE.search(k)), default=DEFAULT_OTHER)
    feeds = {}
    made = [vi for vi in graph_inputs(model) if vi.name not in options.inputs]
    for vi in made:
        check_input_kind(vi)
    shapes = {vi.name: _concrete_shape(vi, sizes, options.shapes.get(vi.name)) for vi in made}
    dtypes = {vi.name: helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type) for vi in made}
    check_input_bytes(shapes, dtypes)  # before allocating anything
    for vi in graph_inputs(model):
        if vi.name in options.inputs:
            feeds[vi.name] = options.inputs[vi.name]
            continue
        rng = np.random.default_rng(zlib.crc32(f"{vi.name}|{sorted(sizes.items())}".encode()))
        feeds[vi.name] = _values(vi.name, shapes[vi.name], dtypes[vi.name], rng, vocab.get(vi.name), time_dim)
    return feeds


def _concrete_shape(vi: onnx.ValueInfoProto, sizes: dict[str, int], given: tuple | None) -> tuple[int, ...]:
    shape = []
    for axis, name in enumerate(dim_names(vi)):
        if given is not None and axis < len(given) and given[axis] is not None:
            shape.append(int(given[axis]))
        else:
            shape.append(name if isinstance(name, int) else sizes.get(name, DEFAULT_OTHER))
    return tuple(shape)


def _values(name, shape, dtype, rng, vocab: int | None, time_dim: int) -> np.ndarray:
    if dtype == np.bool_:
        return rng.random(shape) < 0.8  # masks: mostly kept
    if np.issubdtype(dtype, np.integer):
        if vocab is not None:
            return rng.integers(0, vocab, size=shape).astype(dtype)  # token ids index the embedding table
        if LENGTH_LIKE.search(name):
            lengths = rng.integers(1, time_dim + 1, size=shape)
            lengths.reshape(-1)[:1] = time_dim  # the longest sequence fills the time dim
            return lengths.astype(dtype)
        if MASK_LIKE.search(name):
            return np.ones(shape, dtype=dtype)
        return rng.integers(0, 2, size=shape).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        return rng.random(shape).astype(dtype)  # [0, 1): safe for log/sqrt and image-like inputs
    return np.zeros(shape, dtype=dtype)


def _vocabulary_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Integer inputs used as Gather indices into a table: input name -> rows of that table."""
    tables = {t.name: t.dims[0] for t in model.graph.initializer if t.dims}
    aliases = {i.name: i.name for i in graph_inputs(model)}
    found: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in {"Cast", "Unsqueeze", "Reshape", "Flatten", "Identity"} and node.input[0] in aliases:
            aliases[node.output[0]] = aliases[node.input[0]]
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in aliases:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if axis == 0 and node.input[0] in tables:
                source = aliases[node.input[1]]
                found[source] = min(found.get(source, tables[node.input[0]]), tables[node.input[0]])
    return found
