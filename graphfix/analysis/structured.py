"""Recognisers of structured constants: masks and tables a tracer folded at an export-time size.

A constant cut at an export-time size can be rebuilt at run time when its content follows from its size:

- `band_pattern`: a two-valued constant over its last two axes that is a triangle (`torch.tril`/`torch.triu`,
  any diagonal offset) or a diagonal (`torch.eye`), e.g. a causal mask `tril(ones(T, T))` folded to bool
  `[7, 7]`, an additive mask `triu(full((T, T), -inf), 1)`, or a mask with one side fixed (`tril(ones(T, 8))`,
  T queries over 8 memory slots);
- `table_prefix`: a constant equal to the leading rows of a larger table that is still in the graph
  (`self.pe[:, :int(T)]` where `self.pe` is also read elsewhere).

Each returns what it found, or a `str` saying why the constant does not match (for the rule's rejection).
`baked_operands` finds the candidates (constant operands of broadcasting ops cut at a dynamic dim's export-time
size); `regrown` computes such a constant at other sizes, as a trace there would have folded it (the proof's
re-traced original, graphfix.validate.retrace).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.broadcast import BROADCAST_OPS
from graphfix.analysis.constants import arange_axis

MAX_TABLE_ELEMENTS = 1 << 22  # tables compared value by value; bigger ones are weights, not position tables


@dataclass(frozen=True)
class Baked:
    """Constant input `index` of `node`, whose `axes` (its own axes, with the dim of `other` each meets) are cut
    at that dim's export-time size."""

    node: gs.Node
    index: int
    const: gs.Tensor
    value: np.ndarray
    other: gs.Tensor
    oshape: list
    axes: list[tuple[int, str]]

    def source(self, axis: int) -> int:
        """The axis of `other` that the constant's `axis` meets."""
        return len(self.oshape) - self.value.ndim + axis

    def export_sizes(self) -> set[int]:
        return {int(self.value.shape[a]) for a, _ in self.axes}


def baked_operands(ctx) -> Iterator[Baked]:
    """Constant operands of broadcasting ops with an axis longer than 1 where another operand has a named
    dynamic dim (one per constant: the first such operand)."""
    for node in ctx.graph.nodes:
        if node.op not in BROADCAST_OPS:
            continue
        shapes = [ctx.shape(t) for t in node.inputs]
        for index, const in enumerate(node.inputs):
            value = ctx.constant_value(const)
            if value is None or value.ndim == 0:
                continue
            for other, oshape in zip(node.inputs, shapes, strict=True):
                if other is const or oshape is None:
                    continue
                lead = len(oshape) - value.ndim
                axes = [(a, oshape[lead + a]) for a in range(value.ndim)
                        if lead + a >= 0 and value.shape[a] > 1 and isinstance(oshape[lead + a], str)]
                if axes:
                    yield Baked(node, index, const, value, other, oshape, axes)
                    break


def is_uniform(value: np.ndarray, axes: Iterable[int]) -> bool:
    return all(np.all(value == value.take([0], axis=a)) for a in axes)


def shrunk(value: np.ndarray, axes: Iterable[int]) -> np.ndarray:
    """`value` cut to size 1 along `axes` (a uniform constant that broadcasts back to any size)."""
    axes = set(axes)
    return value[tuple(slice(0, 1) if a in axes else slice(None) for a in range(value.ndim))]


def tables(ctx, baked: Baked) -> Iterator[gs.Tensor]:
    """The graph's constants other than the baked one (candidates for `table_prefix`)."""
    return (t for t in ctx.tensors.values() if t is not baked.const)


def regrown(ctx, baked: Baked, sizes: dict[int, int]) -> np.ndarray | None:
    """The constant as a trace with `sizes` (its axis -> size) would have folded it, when it is structural (uniform,
    an arange from 0, a table's prefix, a band); None otherwise."""
    axes = [a for a, _ in baked.axes]
    shape = [sizes.get(a, d) for a, d in enumerate(baked.value.shape)]
    if is_uniform(baked.value, axes):
        return np.broadcast_to(shrunk(baked.value, axes), shape).copy()
    arange = arange_axis(baked.value, axes)
    if arange is not None and arange[:2] == (0.0, 1.0):
        return np.arange(shape[arange[2]]).astype(baked.value.dtype).reshape(shape)
    table = table_prefix(baked.value, axes, tables(ctx, baked), ctx.constant_value)
    if not isinstance(table, str):
        full = ctx.constant_value(table)
        return None if any(s > d for s, d in zip(shape, full.shape, strict=True)) else \
            full[tuple(slice(0, s) for s in shape)].copy()
    band = band_pattern(baked.value, axes)
    if isinstance(band, str):
        return None
    holds = band.holds(shape[-2], shape[-1])
    return np.where(holds, band.inside, band.outside).astype(baked.value.dtype).reshape(shape)


@dataclass(frozen=True)
class Band:
    """A constant over its last two axes (rows i, columns j): `inside` where the band holds, `outside` elsewhere.

    kind "triu": j - i >= k; "tril": j - i <= k; "eye": j - i == k (ONNX Trilu / EyeLike attribute meanings)."""

    kind: str
    k: int
    inside: np.ndarray  # 0-d, the constant's dtype
    outside: np.ndarray

    def holds(self, rows: int, cols: int) -> np.ndarray:
        offset = np.arange(cols)[None, :] - np.arange(rows)[:, None]
        return {"triu": offset >= self.k, "tril": offset <= self.k, "eye": offset == self.k}[self.kind]

    def torch(self, size: str = "T", cols: str | None = None) -> str:
        """The PyTorch call that builds it, written with `size` (and `cols` where the columns differ)."""
        if self.kind == "eye" and cols is None:
            base = f"torch.eye({size})" if not self.k else f"torch.diag(torch.ones({size}-{abs(self.k)}), {self.k})"
        elif self.kind == "eye":
            base = f"torch.eye({size}, {cols})" if not self.k else \
                f"torch.ones({size}, {cols}).tril({self.k}).triu({self.k})"
        else:
            k = f", {self.k}" if self.k else ""
            base = f"torch.{self.kind}({_torch_full(size, self.inside, cols or size)}{k})"
        return base if not self.outside else f"{base} (with {_torch_value(self.outside)} elsewhere)"

    def show(self) -> str:
        """'a triu mask (k=1): True inside, False elsewhere'-style text."""
        k = f" (k={self.k})" if self.k else ""
        noun = "an eye (diagonal) matrix" if self.kind == "eye" else f"a {self.kind} mask"
        return f"{noun}{k}: {_torch_value(self.inside)} inside, {_torch_value(self.outside)} elsewhere"


def band_pattern(value: np.ndarray, axes: Iterable[int]) -> Band | str:
    """The `Band` that `value` is over its last two axes, or why it is not one."""
    if value.ndim < 2 or any(d != 1 for d in value.shape[:-2]):
        return f"{list(value.shape)} is not a matrix (leading dims must be 1)"
    if not axes or not set(axes) <= {value.ndim - 2, value.ndim - 1}:
        return "its baked axes are not among its last two (a mask's rows or columns follow sizes)"
    matrix = value.reshape(value.shape[-2:])
    rows, cols = matrix.shape
    levels = np.unique(matrix)
    if levels.size != 2:
        return f"it holds {levels.size} distinct values, a mask holds 2"
    pairs = [(levels[-1], levels[0]), (levels[0], levels[-1])]
    for inside, outside in sorted(pairs, key=lambda pair: pair[1] != 0):  # try 0 / False outside first
        where = matrix == inside
        if not where.any():
            continue
        offset = (np.arange(cols)[None, :] - np.arange(rows)[:, None])[where]
        for kind, k in (("eye", int(offset[0])), ("triu", int(offset.min())), ("tril", int(offset.max()))):
            band = Band(kind, k, np.asarray(inside, value.dtype), np.asarray(outside, value.dtype))
            if np.array_equal(band.holds(rows, cols), where):
                return band
    return "its two values do not form a triangle or a diagonal"


def table_prefix(value: np.ndarray, axes: list[int], tensors: Iterable[gs.Tensor],
                 load: Callable[[gs.Tensor], np.ndarray | None]) -> gs.Tensor | str:
    """The first constant of `tensors` that extends `value` along `axes` (equal to it on its leading entries there,
    the same size elsewhere, longer on a baked axis), or why none does. Shapes are compared before any value is
    loaded, so large weights are never read."""
    longer = [t for t in tensors if _extends(_constant_shape(t), value.shape, axes)]
    if not longer:
        return "no constant in the graph is longer along the baked axes and the same size elsewhere"
    cut = tuple(slice(0, d) for d in value.shape)
    for tensor in longer:
        table = load(tensor)
        if table is not None and table.dtype == value.dtype and np.array_equal(table[cut], value):
            return tensor
    return f"{len(longer)} longer constant(s) in the graph, none starts with these values"


def _constant_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    if isinstance(tensor, gs.Constant):
        return tuple(tensor.shape)
    node = tensor.inputs[0] if tensor.inputs else None
    if node is not None and node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
        return tuple(node.attrs["value"].shape)
    return None


def _extends(shape: tuple[int, ...] | None, cut: tuple[int, ...], axes: list[int]) -> bool:
    if shape is None or len(shape) != len(cut) or int(np.prod(shape)) > MAX_TABLE_ELEMENTS:
        return False
    return all(shape[a] >= cut[a] if a in axes else shape[a] == cut[a] for a in range(len(cut))) \
        and any(shape[a] > cut[a] for a in axes)


def _torch_full(rows: str, fill: np.ndarray, cols: str) -> str:
    if fill.dtype == np.bool_:
        return f"torch.ones({rows}, {cols}, dtype=torch.bool)"
    return f"torch.ones({rows}, {cols})" if fill == 1 else f"torch.full(({rows}, {cols}), {_torch_value(fill)})"


def _torch_value(v: np.ndarray) -> str:
    item = v.item()
    if isinstance(item, bool):
        return str(item)
    if isinstance(item, float) and np.isinf(item):
        return "float('-inf')" if item < 0 else "float('inf')"
    return repr(item)
