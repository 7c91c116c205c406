"""Echoes of a baked size as positions: a constant `arange(n)` that meets data, n a form of the size.

`(arange(int(T)) < lengths[:, None]).sum(1)` traced at T = 20 folds the positions into the constant [0, 1, ..., 19]
(GF014 reports it). Where a fix lets the model run at other lengths, the count stays at most 20 there: helper 145
had it beside GF007's `x[:, :T - 1] + x[:, 1:]` and GF004's head split, written with exit 0 and wrong by 25 to 84
at 41 frames. Positions are any whole progression, scaled, shifted or reversed (helper 146: `arange(int(T)) * 4 <
samples`, `arange(1, T + 1) <= lengths`, `(T - 1) - arange(T)`); those whose count is the size, one less or more,
a half or twice it (the forms of a shape's entry, int_echoes.SIZE_FORMS) are read where they meet data, as a value
(int_echoes.VALUE_OPS): a model's own positions of such a count (a soft-argmax over 16 bins at T = 16) are doubted
at that export length, and not at others. Beside GF003's fix, whose export length is not known, none is read:
any count doubted refused `h[pad] = 0` beside every model's own bins or a text mask (helper 146), a known miss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.constants import arange_axis
from graphfix.analysis.int_echoes import SIZE_FORMS, VALUE_OPS
from graphfix.analysis.sizes.ops import is_table

MAX_POSITIONS = 1 << 16  # a longer constant vector is a table of the model's, not positions a trace folded


def position_echoes(nodes: Iterable[gs.Node], wanted: list[int], constant_value, fixed: Callable[[gs.Node], bool]
                    ) -> list[str]:
    """A line for each node that meets data with n constant positions, n a form of one of `wanted`."""
    lines = []
    for node in nodes:
        inputs = [t for t in node.inputs if t.name or isinstance(t, gs.Constant)]
        if node.op not in VALUE_OPS or node.op == "Range" or fixed(node) or all(is_table(t) for t in inputs):
            continue
        counts = [count for t in inputs if (count := _positions(t, constant_value))]
        found = next(((count, text.format(n)) for count in counts for n in wanted for text, of in SIZE_FORMS
                      if of(n) == count), None)
        if found is not None:
            count, form = found
            lines.append(f"{node.op} '{node.name}' reads {count} constant positions, as many as {form}")
    return lines


def _positions(tensor: gs.Tensor, constant_value) -> int | None:
    """n, where the tensor is n > 3 constant positions laid along one axis: whole numbers in a progression of one
    nonzero step (`arange(n)`, `arange(1, n + 1)`, `arange(n) * 4`, `(n - 1) - arange(n)`); a weight's values are
    read only where its declared shape is such a vector (a Constant node's are in the graph already)."""
    if not is_table(tensor):
        return None
    dims = tensor.shape if isinstance(tensor, gs.Constant) else None
    if dims is not None and (sum(d > 1 for d in dims) != 1 or not 3 < max(dims) <= MAX_POSITIONS):
        return None
    value = constant_value(tensor)
    if value is None or not 3 < value.size <= MAX_POSITIONS or value.dtype.kind not in "iuf" \
            or not np.array_equal(value, np.round(value)):
        return None
    found = arange_axis(value, [axis for axis, extent in enumerate(value.shape) if extent > 1])
    return value.size if found is not None and found[1] != 0 else None
