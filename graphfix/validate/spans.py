"""Centred windows of a constant table: `rel[c - s : c + s]`, the 2 s relative positions around row c of a table
of at least 2 c rows (DeBERTa's relative embeddings, sliced by `att_span = min(T, c)`), or one row more or less
(ESPnet's relative positions, `pe[c - T + 1 : c + T]`, whose table a run before the export grew to 2 T - 1 rows).

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

from typing import NamedTuple

import numpy as np
import onnx

from graphfix.analysis.sizes.domain import last_size_at_most
from graphfix.core.recent import per_model
from graphfix.validate.graph_sizes import constant_tables, constant_values, offset_from


class Window(NamedTuple):
    """A centred window: rows `c - s` to `c + s` of a table, s a size over the input `dims`."""

    c: int
    dims: tuple[str, ...]
    span: object  # s, a sympy expression over the input dims (frames of a conv front end's samples, often)
    exact: bool  # `c - s : c + s` (DeBERTa's); else a row off centre (ESPnet's `c - s + 1 : c + s`)

    def past(self, sizes: dict[str, int]) -> bool:
        """Whether s is past c at `sizes` (False where they leave a dim of s unknown)."""
        if not all(dim in sizes for dim in self.dims):
            return False
        value = self.span.subs({symbol: sizes[symbol.name] for symbol in self.span.free_symbols})
        return bool(value.is_number and value > self.c)


@per_model  # every probe_sizes call of a proof asks
def centred_windows(model: onnx.ModelProto) -> list[Window]:
    """Each Slice of a constant table from `c - s` to `c + s` (s a size over the input dims, 2 c - 1 no more than
    the table's rows along the sliced axis; or a row off centre). The size analysis runs only where the graph holds
    a Slice of an initializer whose start is a Sub from a whole constant."""
    candidates = _candidates(model)
    if not candidates:
        return []
    from graphfix.analysis.sizes import static_sizes

    sizes, graph = static_sizes(model)
    tensors = graph.tensors()
    found: list[Window] = []
    for start, end, c in candidates:
        low, high = (sizes.value(tensors[name]) if name in tensors else None for name in (start, end))
        if not low or not high or len(low) != 1 or len(high) != 1 or low[0] is None or high[0] is None:
            continue
        if not (high[0] - low[0]).free_symbols or (high[0] + low[0]).expand().free_symbols or \
                abs((high[0] + low[0]).expand() - 2 * c) > 1:
            continue  # not `c - s` and `c + s` of the same size s (or one row more either way)
        span = c - low[0]  # where the start wraps: past s = c
        window = Window(c, tuple(sorted(symbol.name for symbol in span.free_symbols)), span,
                        (high[0] + low[0]).expand() == 2 * c)
        if window not in found:
            found.append(window)
    return found


def open_windows(model: onnx.ModelProto, export: dict[str, int]) -> list[Window]:
    """The windows the probe goes past: DeBERTa's, and ESPnet's where s is c at the `export` sizes (the trace's,
    where given). ESPnet's `extend_pe` grows its table past `max_len` in Python: a table of 2 c - 1 rows is the
    model's own (`max_len`, 5000 by default), a domain, unless the export itself grew it, or a run before it
    (wav2vec2-Conformer's relative positions with 16 `max_source_positions`, run at 2400 samples: 119 frames)."""
    return [window for window in centred_windows(model)
            if window.exact or (window.dims and all(dim in export for dim in window.dims)
                                and window.span.subs({symbol: export[symbol.name]
                                                      for symbol in window.span.free_symbols}) == window.c)]


def window_thresholds(windows: list[Window]) -> list[tuple[int, tuple[str, ...]]]:
    """(size, dims) for the probe to go past, for each window: where s follows one input dim, the largest size of
    it at which s is c + 1 or less (wav2vec2-Conformer's window is in frames of its samples); c + 1 where s follows
    several. One row past c the wrapped fragment is one row, which may broadcast and run."""
    found = []
    for window in windows:
        if len(window.span.free_symbols) != 1:
            found.append((window.c + 1, window.dims))
        elif (last := last_size_at_most(window.span, window.c + 1)) is not None:
            found.append((last, window.dims))
    return found


def _candidates(model: onnx.ModelProto) -> list[tuple[str, str, int]]:
    """(start, end, c) of each Slice of a constant table whose start is `c - x` (c a whole constant > 1, through
    reshapes and casts) and whose end is computed, with 2 c - 1 rows or more along the sliced axis."""
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
        if offset is not None and offset[0] > 1 and rows is not None and 2 * offset[0] <= rows + 1:
            found.append((node.input[1], node.input[2], offset[0]))
    return found


def _rows(dims, axis: np.ndarray | None) -> int | None:
    """The table's rows along the sliced axis (None where the axes are computed, or several)."""
    if axis is None or axis.size != 1 or axis.dtype.kind not in "iu" or not -len(dims) <= axis.ravel()[0] < len(dims):
        return None
    return int(dims[int(axis.ravel()[0])])
