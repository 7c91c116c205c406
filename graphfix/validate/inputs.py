"""Synthesising graph inputs for a binding of the symbolic dims, deterministically, like real data.

Floats are standard normal (activations, not [0, 1) pixels); integer ids stay within the table they index;
lengths stay within their dim, with at least one padded row: integers, or floats named as lengths, absolute or,
where the graph scales them by a size first (speechbrain's `round(wav_lens * T)`), relative in (0, 1]; masks are
mixed within every row. Sizes are chosen in graphfix.validate.sizes.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from graphfix.analysis.broadcast import batch_named
from graphfix.analysis.given_shapes import check_shapes  # noqa: F401  (re-exported for the commands)
from graphfix.core.counts import MAX_RANK
from graphfix.validate.budget import NotProbed, check_input_bytes, check_input_kind
from graphfix.validate.given import UNFEEDABLE, cast_fills
from graphfix.validate.graph_sizes import dim_names, graph_inputs
from graphfix.validate.sizes import (  # noqa: F401  (re-exported: the surgery commands import them from here)
    DEFAULT_OTHER,
    MASK_LIKE,
    probe_sizes,
)

LENGTH_LIKE = re.compile(r"len", re.IGNORECASE)
PADDING_LIKE = re.compile(r"pad", re.IGNORECASE)
LEVELS = ("runs", "consistent", "original", "torch")  # weakest first
NORMAL_BLOCK = 1 << 20  # values drawn at a time for a float input


@dataclass
class ValidationOptions:
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)  # input -> dims (None = symbolic)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # input -> user values
    trace_sizes: dict[str, int] = field(default_factory=dict)  # symbolic dim -> export-time size (given)
    solved_sizes: dict[str, int] = field(default_factory=dict)  # export-time sizes the graph's analysis solved
    num_sizes: int = 3  # the export size, batch 1 with smaller sizes, larger sizes
    rtol: float = 1e-3
    atol: float = 1e-4
    require: str = "runs"  # the evidence every dynamic dim must reach (see graphfix.validate.evidence)
    choices: dict[str, int] = field(default_factory=dict)  # the candidates the repair was built with (re-trace)
    moved: frozenset[str] = frozenset()  # dims an applied fix changes the original along (`Fix.moves`)
    configured: frozenset[str] = frozenset()  # shapes a model may lack: the configuration's (a glob matches many
    # models), and with several models on the command line, its own too (graphfix.core.config.probe_options_for)


def synthesize_inputs(
    model: onnx.ModelProto, sizes: dict[str, int], options: ValidationOptions
) -> dict[str, np.ndarray]:
    """A value for every graph input at the binding `sizes`; user values override; seeded per input, size."""
    vocab = _vocabulary_sizes(model)
    relative = _scaled_by_a_size(model) if any(LENGTH_LIKE.search(vi.name) for vi in graph_inputs(model)) else set()
    batches = {name for vi in graph_inputs(model) for name in batch_named(dim_names(vi))}
    time_dim = max((v for k, v in sizes.items() if k not in batches), default=DEFAULT_OTHER)
    feeds = {}
    made = [vi for vi in graph_inputs(model) if vi.name not in options.inputs]
    for vi in made:
        check_input_kind(vi)
        check_input_type(vi)
    shapes = {vi.name: _concrete_shape(vi, sizes, options.shapes.get(vi.name)) for vi in made}
    for name, shape in shapes.items():
        if len(shape) > MAX_RANK:
            raise NotProbed(f"input '{name}' has {len(shape)} dims, and numpy, which graphfix makes the probe's "
                            f"values with, holds at most {MAX_RANK}: the model was not run (its static analysis "
                            "stands)")
    dtypes = {vi.name: helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type) for vi in made}
    check_input_bytes(shapes, dtypes)  # before allocating anything
    given = cast_fills(model, options.inputs)  # cast once by check_given; a caller of validate itself here
    for vi in graph_inputs(model):
        if vi.name in given:
            feeds[vi.name] = given[vi.name]
            continue
        rng = np.random.default_rng(zlib.crc32(f"{vi.name}|{sorted(sizes.items())}".encode()))
        feeds[vi.name] = _values(vi.name, shapes[vi.name], dtypes[vi.name], rng, vocab.get(vi.name), time_dim,
                                 vi.name in relative)
    return feeds


def check_input_type(value: onnx.ValueInfoProto) -> None:
    """Refuse to make values onnxruntime's Python API cannot take (numpy has no such type; ml_dtypes' arrays are
    refused with "Numpy_type 256 can't be converted"): bfloat16, the float8 and float4 types, int4 and uint4. The
    model is reported as not run (probe-skipped), not as failing."""
    elem = value.type.tensor_type.elem_type
    if elem in UNFEEDABLE:
        kind = helper.tensor_dtype_to_string(elem).removeprefix("TensorProto.").lower()
        raise NotProbed(f"input '{value.name}' is {kind}: onnxruntime's Python API takes no {kind} values, so the "
                        "model was not run (its static analysis stands)")


def _concrete_shape(vi: onnx.ValueInfoProto, sizes: dict[str, int], given: tuple | None) -> tuple[int, ...]:
    shape = []
    for axis, name in enumerate(dim_names(vi)):
        if isinstance(name, str) and name in sizes:  # --shape's size, or where the probe moved it (shape_moved)
            shape.append(sizes[name])
        elif given is not None and axis < len(given) and given[axis] is not None:
            shape.append(int(given[axis]))
        else:
            shape.append(name if isinstance(name, int) else sizes.get(name, DEFAULT_OTHER))
    return tuple(shape)


def _normal(shape: tuple[int, ...], dtype, rng: np.random.Generator) -> np.ndarray:
    """Standard normal values in `dtype`, drawn a block at a time: the float64 draws of a whole large input would
    take twice its memory (or four times a float16 one's) beside it. The values are those of one draw."""
    out = np.empty(shape, dtype=dtype)
    flat = out.reshape(-1)
    for start in range(0, flat.size, NORMAL_BLOCK):
        flat[start:start + NORMAL_BLOCK] = rng.standard_normal(min(NORMAL_BLOCK, flat.size - start))
    return out


def _values(name, shape, dtype, rng, vocab: int | None, time_dim: int, relative: bool = False) -> np.ndarray:
    if dtype == np.bool_:
        return mixed_mask(shape, rng, padded_true=bool(PADDING_LIKE.search(name)))
    if np.issubdtype(dtype, np.integer):
        if vocab is not None:
            return rng.integers(0, vocab, size=shape).astype(dtype)  # token ids index the embedding table
        if LENGTH_LIKE.search(name):
            return _lengths(shape, rng, time_dim).astype(dtype)
        if MASK_LIKE.search(name):
            return mixed_mask(shape, rng, padded_true=bool(PADDING_LIKE.search(name))).astype(dtype)
        return rng.integers(0, 2, size=shape).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        if LENGTH_LIKE.search(name) and len(shape) == 1:  # one length per row: absolute, or relative
            lengths = _lengths(shape, rng, time_dim)
            return (lengths / time_dim if relative else lengths).astype(dtype)
        return _normal(shape, dtype, rng)  # like activations: signed, unit scale
    return np.zeros(shape, dtype=dtype)


def _lengths(shape, rng, time_dim: int) -> np.ndarray:
    """Lengths within the time dim: the first fills it, at least one other (when there is one) is shorter."""
    lengths = rng.integers(1, time_dim + 1, size=shape)
    flat = lengths.reshape(-1)
    flat[:1] = time_dim
    if flat.size > 1 and time_dim > 1:
        flat[-1] = rng.integers(1, time_dim)
    return lengths


def mixed_mask(shape, rng, padded_true: bool) -> np.ndarray:
    """A mask whose every row (last axis) keeps a prefix and pads the rest; rows of one element alternate.
    `padded_true`: True marks padding (fairseq's padding_mask), else True marks what is kept."""
    if not shape or shape[-1] == 0:
        return np.zeros(shape, dtype=bool) if padded_true else np.ones(shape, dtype=bool)
    width = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    if width == 1:
        kept = (np.arange(rows) % 2 == 0)[:, None]
    else:
        lengths = rng.integers(1, width, size=rows)  # 1 .. width-1: each row keeps some and pads some
        kept = np.arange(width)[None, :] < lengths[:, None]
    kept = kept.reshape(shape)
    return ~kept if padded_true else kept


_PASS = frozenset({"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity"})  # values pass as they are
_SIZE_OPS = _PASS | {"Gather", "Slice", "Concat", "ReduceProd", "Mul"}  # a size read from Shape, and reshaped


def _scaled_by_a_size(model: onnx.ModelProto) -> set[str]:
    """Graph inputs that the graph multiplies, as they are (cast or reshaped), by a size read from a Shape:
    relative lengths (speechbrain's `round(wav_lens * T)`, ECAPA's `lengths * L`)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    aliases = {i.name: i.name for i in graph_inputs(model)}
    found = set()
    for node in model.graph.node:
        if node.op_type in _PASS and node.input and node.input[0] in aliases:
            aliases[node.output[0]] = aliases[node.input[0]]
        elif node.op_type == "Mul" and len(node.input) == 2:
            for mine, other in (node.input, node.input[::-1]):
                if mine in aliases and _from_shape(other, producers):
                    found.add(aliases[mine])
    return found


def _from_shape(name: str, producers: dict, depth: int = 8) -> bool:
    """`name` is computed from a Shape op through size arithmetic alone."""
    node = producers.get(name)
    if node is None or depth == 0:
        return False
    if node.op_type == "Shape":
        return True
    return node.op_type in _SIZE_OPS and any(_from_shape(i, producers, depth - 1) for i in node.input[:1])


def _vocabulary_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Integer inputs used as Gather indices into a table: input name -> rows of that table."""
    tables = {t.name: t.dims[0] for t in model.graph.initializer if t.dims}
    aliases = {i.name: i.name for i in graph_inputs(model)}
    found: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in _PASS and node.input[0] in aliases:
            aliases[node.output[0]] = aliases[node.input[0]]
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in aliases:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if axis == 0 and node.input[0] in tables:
                source = aliases[node.input[1]]
                found[source] = min(found.get(source, tables[node.input[0]]), tables[node.input[0]])
    return found
