"""Centred windows of a constant table: `rel[c - s : c + s]`, the 2 s relative positions around row c of a table
of at least 2 c rows (DeBERTa's relative embeddings, sliced by `att_span = min(T, c)`).

Tracing drops Python's `min`: the graph slices with s = T, and past T = c the start goes negative and wraps (one
row at T = c + 1) where PyTorch clamped the span to c; the ops after it then fail or compute something else. Only
a probe past c shows it, and the length is often read from an inner tensor's Shape (DeBERTa's query layer), where
the graph's own reading (graph_sizes.size_thresholds) names no input dim: the size analysis reads both bounds as
expressions over the input dims instead.

A table whose rows are positions as they are (BERT's 512 position embeddings, a slice `pe[16 - T : 16]` with a
constant end) is no centred window: those rows bound the model's domain (graph_sizes.size_limit) and nothing here
moves a probe past them. A centred window's 2 c rows do not: the slice's end `c + s` runs past
them, and no model means the wrapped fragment, so past c either Python capped the span or the model fails in
PyTorch too: the graph cannot tell these apart, and the failure is reported either way (an error on the
second is the model's own, past the window it was written for).
"""

from __future__ import annotations

import numpy as np
import onnx

from graphfix.core.recent import per_model
from graphfix.validate.graph_sizes import constant_tables, constant_values, offset_from


@per_model  # every probe_sizes call of a proof asks
def centred_windows(model: onnx.ModelProto) -> list[tuple[int, tuple[str, ...]]]:
    """(c, input dims s is computed from) for each Slice of a constant table from `c - s` to `c + s` (s a size
    over the input dims, 2 c no more than the table's rows along the sliced axis). The size analysis runs only
    where the graph holds a Slice of an initializer whose start is a Sub from a whole constant."""
    candidates = _candidates(model)
    if not candidates:
        return []
    from graphfix.analysis.sizes import static_sizes

    sizes, graph = static_sizes(model)
    tensors = graph.tensors()
    found: list[tuple[int, tuple[str, ...]]] = []
    for start, end, c in candidates:
        low, high = (sizes.value(tensors[name]) if name in tensors else None for name in (start, end))
        if not low or not high or len(low) != 1 or len(high) != 1 or low[0] is None or high[0] is None:
            continue
        span = high[0] - c
        if not span.free_symbols or (low[0] - (c - span)).expand() != 0:
            continue  # not `c - s` and `c + s` of the same size s
        window = (c, tuple(sorted(symbol.name for symbol in span.free_symbols)))
        if window not in found:
            found.append(window)
    return found


def _candidates(model: onnx.ModelProto) -> list[tuple[str, str, int]]:
    """(start, end, c) of each Slice of a constant table whose start is `c - x` (c a whole constant > 1, through
    reshapes and casts) and whose end is computed, with 2 c rows or more along the sliced axis."""
    tables, constants = constant_tables(model), constant_values(model)
    producers = {name: node for node in model.graph.node for name in node.output}
    found = []
    for node in model.graph.node:
        if node.op_type != "Slice" or node.input[0] not in tables or len(node.input) < 3 \
                or node.input[2] in constants:
            continue
        offset = offset_from(node.input[1], producers, constants)
        axis = constants.get(node.input[3]) if len(node.input) > 3 and node.input[3] else np.zeros(1, np.int64)
        rows = _rows(tables[node.input[0]], axis)
        if offset is not None and offset[0] > 1 and rows is not None and 2 * offset[0] <= rows:
            found.append((node.input[1], node.input[2], offset[0]))
    return found


def _rows(dims, axis: np.ndarray | None) -> int | None:
    """The table's rows along the sliced axis (None where the axes are computed, or several)."""
    if axis is None or axis.size != 1 or axis.dtype.kind not in "iu" or not -len(dims) <= axis.ravel()[0] < len(dims):
        return None
    return int(dims[int(axis.ravel()[0])])
