"""The sizes a graph reveals to the probe, read from its nodes and declared shapes (no size analysis): the limit a
position table sets on the lengths, the constants a size is compared with or subtracted from, the static sizes a
dynamic dim may meet, and the most frequent baked size (a guess at the export length).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from graphfix.analysis.given_shapes import graph_inputs
from graphfix.core.recent import per_model
from graphfix.io.protos import constant_values

MAX_HINT = 512  # baked constants above this are not taken as an export size
MAX_THRESHOLD = 1 << 14  # nor constants above this as a size's threshold (a pad to a multiple of 4004 samples is one)
SHAPE_OPS = {"Reshape", "Expand", "Tile", "ConstantOfShape", "Slice", "Range"}
THRESHOLD_OPS = {"Sub", "Min", "Max", "Clip", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"}
TABLE_OPS = {"Gather", "GatherND", "GatherElements", "Slice"}
# ops that keep positions positions (moved, offset, relative to each other); a bucketing of them (Abs, Log, Min,
# Where: WavLM's and T5's relative buckets) indexes a table whose rows do not bound the length
POSITION_OPS = {"Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Tile", "Cast", "Identity", "Transpose",
                "Slice", "Concat", "Add", "Sub", "Neg"}


def dim_names(vi: onnx.ValueInfoProto) -> list[str | int]:
    """Each dim of an input: its size when fixed, else its symbolic name (`<input>:<axis>` when unnamed)."""
    dims = []
    for axis, d in enumerate(vi.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value >= 0:  # 0 is a size: an empty tensor, as declared
            dims.append(d.dim_value)
        else:
            dims.append(d.dim_param or f"{vi.name}:{axis}")
    return dims


def size_limit(model: onnx.ModelProto, grown: bool = False) -> int | None:
    """The fewest rows of a table the graph indexes with positions (a Range, offset or moved: `POSITION_OPS`) or
    slices by a computed end, and the least c of a table sliced from `c - size` (a size read from an input's Shape:
    `self.pe[16 - x.shape[1]:16]`, the last rows of a context of 16, whose start wraps past 16 in PyTorch too): a
    length beyond it is outside the model (Whisper's 448 positions), not a bug of the export. Not a window
    centred on a row (DeBERTa's), nor, where the table was `grown` at the export size, ESPnet's window a row off
    centre: past its centre each is a threshold (graphfix.validate.spans)."""
    tables = constant_tables(model)
    constants = constant_values(model)
    ranged = _downstream_of(model, {n.output[0] for n in model.graph.node if n.op_type == "Range"}, POSITION_OPS)
    producers = {name: node for node in model.graph.node for name in node.output}
    inputs = {vi.name: dim_names(vi) for vi in graph_inputs(model)}
    limits = []
    for node in model.graph.node:
        if node.op_type not in TABLE_OPS or node.input[0] not in tables or len(node.input) < 2:
            continue
        if node.op_type == "Slice" and _centred(node, producers, constants, 1 if grown else 0):
            continue  # a window around row c: past c it wraps, a threshold (graphfix.validate.spans), no limit
        if node.op_type == "Slice" and len(node.input) > 2 and node.input[2] not in constants:
            limits.append(_sliced_rows(node, tables, constants))
        elif node.op_type != "Slice" and node.input[1] in ranged:
            limits.append(int(tables[node.input[0]][0]))
        if node.op_type == "Slice":
            limits.append(_start_before_a_size(node.input[1], producers, inputs, constants))
    limits = [rows for rows in limits if rows and rows > 1]
    return min(limits) if limits else None


_MOVES = ("Unsqueeze", "Squeeze", "Reshape", "Cast", "Identity")  # a value passes them as it is


def constant_tables(model: onnx.ModelProto) -> dict[str, list[int]]:
    """The dims of every constant tensor of rank > 0: initializers, and Constant nodes (the TorchScript exporter
    writes a buffer such as BERT's and DeBERTa's `position_ids`, [1, 512], as one)."""
    tables = {t.name: list(t.dims) for t in model.graph.initializer if t.dims}
    for node in model.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and value.dims:
            tables[node.output[0]] = list(value.dims)
    return tables


def _start_before_a_size(start: str, producers: dict, inputs: dict[str, list], constants: dict) -> int | None:
    """c where a Slice's start is `c - size`, c a whole constant and the size one axis of an input's Shape (moved
    through reshapes and casts on its way, nothing computed from it: `c - T // 4` passes c at 4c): the start goes
    negative, and wraps, past c."""
    offset = offset_from(start, producers, constants)
    return offset[0] if offset and _an_input_axis(offset[1], producers, inputs, constants) else None


def offset_from(name: str, producers: dict, constants: dict) -> tuple[int, str] | None:
    """(c, x) where the value is `c - x` (through reshapes and casts), c a whole constant of one element, or
    `c - x` plus or minus a whole constant (ESPnet's relative window starts at `c - T + 1`: (c + 1, T))."""
    node, shift = _through_moves(name, producers), 0
    if node is not None and node.op_type in ("Add", "Sub"):
        for index in ((1, 0) if node.op_type == "Add" else (1,)):
            k, inner = _whole(constants.get(node.input[index])), _through_moves(node.input[1 - index], producers)
            if k is not None and inner is not None and inner.op_type == "Sub":
                node, shift = inner, k if node.op_type == "Add" else -k
                break
    c = _whole(constants.get(node.input[0])) if node is not None and node.op_type == "Sub" else None
    return (c + shift, node.input[1]) if c is not None else None


def _whole(value: np.ndarray | None) -> int | None:
    """The one whole number a constant holds (None for anything else)."""
    return int(value.ravel()[0]) if value is not None and value.dtype.kind in "iu" and value.size == 1 else None


def _centred(node: onnx.NodeProto, producers: dict, constants: dict, near: int = 0) -> bool:
    """Whether a Slice runs from `c - x` to `c + x` (the same x; `near` rows more or less at the start, ESPnet's
    `c - x + 1` at 1): a window of about 2 x rows around row c, whose start wraps past c where Python capped x
    (DeBERTa's relative span, graphfix.validate.spans) or grew the table (ESPnet's), no domain limit."""
    offset, end = offset_from(node.input[1], producers, constants), _through_moves(node.input[2], producers)
    if offset is None or end is None or end.op_type != "Add" or offset[1] not in end.input:
        return False
    return any(value is not None and abs(value - offset[0]) <= near for value in map(_whole, map(constants.get,
                                                                                                  end.input)))


def _through_moves(name: str, producers: dict):
    node = producers.get(name)
    while node is not None and node.op_type in _MOVES:
        node = producers.get(node.input[0])
    return node


def _an_input_axis(name: str, producers: dict, inputs: dict[str, list], constants: dict) -> bool:
    """Whether the value is one symbolic axis of a graph input: Gather(Shape(input), a constant index), or a Shape
    whose start and end take one axis (torch.export's `sym_size`)."""
    node = _through_moves(name, producers)
    if node is not None and node.op_type == "Shape":
        bounds = {a.name: a.i for a in node.attribute if a.name in ("start", "end")}
        axis, shape = bounds.get("start"), node
        if axis is None or bounds.get("end") != axis + 1:
            return False
    elif node is not None and node.op_type == "Gather" and len(node.input) > 1:
        index, shape = constants.get(node.input[1]), producers.get(node.input[0])
        if index is None or index.size != 1 or shape is None or shape.op_type != "Shape" or shape.attribute:
            return False
        axis = int(index.ravel()[0])
    else:
        return False
    names = inputs.get(shape.input[0])
    return names is not None and -len(names) <= axis < len(names) and isinstance(names[axis], str)


def _sliced_rows(node: onnx.NodeProto, tables, constants) -> int | None:
    """Rows along the axis a Slice with a computed end cuts from a table (axis 0 unless given)."""
    dims = tables[node.input[0]]
    axes = constants.get(node.input[3]) if len(node.input) > 3 else None
    axis = int(axes.ravel()[0]) if axes is not None and axes.size == 1 else 0
    return int(dims[axis]) if -len(dims) <= axis < len(dims) else None


def size_thresholds(model: onnx.ModelProto) -> list[tuple[int, tuple[str, ...]]]:
    """The whole constants 1 < c <= MAX_THRESHOLD that a size read from an input's Shape meets in a subtraction, a
    Min, Max or Clip, or a comparison, each with the input dims that size is read from: where a size crosses one,
    the graph may take another course (a pad that turns into a cut, a clamp that starts to bite). A traced
    `math.ceil(T / 8) * 8` is such a constant. A size read from an inner tensor's Shape names no input dim here
    (`unnamed_thresholds`; graphfix.validate.inner_thresholds names them with the size analysis)."""
    return [(c, dims) for c, dims, _ in _thresholds(model) if dims]


def unnamed_thresholds(model: onnx.ModelProto) -> list[tuple[int, tuple[str, ...]]]:
    """(c, the node's inputs that are not constants) for each threshold whose size names no input dim here."""
    return [(c, sources) for c, dims, sources in _thresholds(model) if not dims]


@per_model  # both readings ask, at every probe_sizes call of a proof
def _thresholds(model: onnx.ModelProto) -> list[tuple[int, tuple[str, ...], tuple[str, ...]]]:
    constants = constant_values(model)
    producers = {name: node for node in model.graph.node for name in node.output}
    inputs = {vi.name: dim_names(vi) for vi in graph_inputs(model)}
    starts = _table_starts(model, producers)
    found = []
    for node in model.graph.node:
        if node.op_type not in THRESHOLD_OPS:
            continue
        values = [constants.get(name) for name in node.input]
        # past MAX_HINT only a size's own arithmetic (a pad to a valid length), not where a table's slice starts:
        # ESPnet's `pe[4999 - T + 1 :]` of its default 5000 rows a side bounds the length (a probe at 5000 frames
        # ran past the run budget, and a healthy encoder was refused; helper 100)
        most = MAX_HINT if node.output[0] in starts else MAX_THRESHOLD
        whole = [c for c in map(_whole, values) if c is not None and 1 < c <= most]
        if not whole:
            continue
        sources = tuple(name for name, v in zip(node.input, values, strict=True) if v is None and name)
        dims = set().union(*(_dims_read(name, producers, inputs, constants) for name in sources))
        ordered = tuple(dict.fromkeys(d for names in inputs.values() for d in names if d in dims))
        found += [(c, ordered, sources) for c in whole]
    return found


def _table_starts(model: onnx.ModelProto, producers: dict) -> set[str]:
    """The outputs of the Subs whose result starts a Slice of a constant table (`pe[c - T:]`, or a row off,
    `pe[c - T + 1:]`), through reshapes and casts."""
    tables, constants, found = constant_tables(model), constant_values(model), set()
    for node in model.graph.node:
        if node.op_type != "Slice" or node.input[0] not in tables or len(node.input) < 2:
            continue
        start = _through_moves(node.input[1], producers)
        if start is not None and start.op_type in ("Add", "Sub") and any(map(constants.__contains__, start.input)):
            start = next((_through_moves(name, producers) for name in start.input if name not in constants), None)
        if start is not None and start.op_type == "Sub":
            found.add(start.output[0])
    return found


def _dims_read(tensor: str, producers: dict, inputs: dict[str, list], constants: dict, budget: int = 64) -> set[str]:
    """The symbolic input dims a value is computed from, through Shape ops of graph inputs (one axis where a Gather
    of a constant index picks it); nothing from an inner tensor's Shape."""
    dims: set[str] = set()
    todo, seen = [(tensor, None)], set()
    while todo and len(seen) < budget:
        name, axes = todo.pop()
        node = producers.get(name)
        if node is None or (name, axes) in seen:
            continue
        seen.add((name, axes))
        if node.op_type == "Shape":
            names = inputs.get(node.input[0])
            if names is not None:
                picked = names if axes is None else [names[a] for a in axes if -len(names) <= a < len(names)]
                dims |= {d for d in picked if isinstance(d, str)}
            continue
        index = constants.get(node.input[1]) if node.op_type == "Gather" and len(node.input) > 1 else None
        if index is not None and index.size == 1 and index.dtype.kind in "iu" and producers.get(node.input[0]) \
                is not None and producers[node.input[0]].op_type == "Shape":
            todo.append((node.input[0], (int(index.ravel()[0]),)))
            continue
        todo.extend((source, None) for source in node.input if source and source not in constants)
    return dims


def _downstream_of(model: onnx.ModelProto, sources: set[str], through: set[str] | None = None) -> set[str]:
    """What `sources` reach, through any op or only those `through`."""
    reached = set(sources)
    for node in model.graph.node:
        if (through is None or node.op_type in through) and reached.intersection(node.input):
            reached.update(node.output)
    return reached


def fixed_sizes(model: onnx.ModelProto) -> set[int]:
    """Sizes > 1 fixed in the graph (weights' dims, inputs' static dims, and the static dims of every declared
    shape that also has a dynamic dim: outputs, value_info): a probe size equal to one of them can make a wrong
    broadcast run by coincidence."""
    sizes = {int(d) for t in model.graph.initializer for d in t.dims if d > 1}
    sizes |= {d for vi in graph_inputs(model) for d in dim_names(vi) if isinstance(d, int) and d > 1}
    return sizes | met_sizes(model)


def declared_sizes(model: onnx.ModelProto) -> set[int]:
    """The static dims > 1 that the graph's inputs and outputs declare beside a dynamic dim (no inference: a size
    baked at export is not among them)."""
    sizes = set()
    for vi in [*graph_inputs(model), *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            sizes |= {int(d.dim_value) for d in dims if d.HasField("dim_value") and d.dim_value > 1}
    return sizes


@per_model  # each proof asks several times
def met_sizes(model: onnx.ModelProto) -> set[int]:
    """The static dims > 1 of every shape (inputs, outputs, inferred value_info) that also has a dynamic dim: the
    static sizes a dynamic dim meets (a sound stand-in for those its own tensors meet)."""
    from graphfix.analysis.shapes import infer_shapes

    inferred = infer_shapes(model)
    sizes = set()
    for vi in [*graph_inputs(inferred), *inferred.graph.output, *inferred.graph.value_info]:
        dims = vi.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            sizes |= {int(d.dim_value) for d in dims if d.HasField("dim_value") and d.dim_value > 1}
    return sizes


def baked_size_hint(model: onnx.ModelProto) -> int | None:
    """The most frequent size > 1 in constants feeding shape ops: likely a trace-time length."""
    constants = constant_values(model)
    counts: Counter[int] = Counter()
    for node in model.graph.node:
        if node.op_type not in SHAPE_OPS:
            continue
        for name in node.input[1:]:
            values = constants.get(name)
            if values is not None and values.dtype.kind == "i" and values.size <= 8:
                counts.update(int(v) for v in values.ravel() if 1 < v <= MAX_HINT)
    return counts.most_common(1)[0][0] if counts else None
