"""Recognisers of structured constants: masks and tables a tracer folded at an export-time size.

A constant cut at an export-time size can be rebuilt at run time when its content follows from its size:

- `band_pattern`: a mask over its last two axes (a mask's two values) that is a triangle (`torch.tril`/`torch.triu`,
  any diagonal offset), a band (a sliding window) or a diagonal (`torch.eye`), e.g. a causal mask
  `tril(ones(T, T))` folded to bool `[7, 7]`, an additive mask `triu(full((T, T), -inf), 1)`, or a mask with one
  side fixed (`tril(ones(T, 8))`, T queries over 8 memory slots). A triangle that reaches the corner of the matrix
  along a size does not show its far edge: it is also every window wider than the export size (`Band.open`);
- `table_prefix`: a constant equal to the leading rows of a larger table that is still in the graph
  (`self.pe[:, :int(T)]` where `self.pe` is also read elsewhere); at the export length N they are also the rows
  that end there (`self.pe[N - T : N]`), so the graph does not determine which;
- `graphfix.analysis.table_cuts.rows_cut_at_a_length`: a whole table folded to N rows and cut to a length at run
  time (`self.cos_cached[: x.shape[1]] * x`): the graph runs only while the length is <= N;
- `positions_cut_to_length`: positions 0 .. N-1 folded while a table is computed from them and cut to a length
  (speechbrain's rotary cache of the next power of two), each Reshape on the way that holds N.

Each returns what it found, or a `str` saying why the constant does not match (for the rule's rejection).
`baked_operands` finds the candidates (constant operands of broadcasting ops cut at a dynamic dim's export-time
size); `regrown` computes such a constant at other sizes, as a trace there would have folded it (the proof's
re-traced original, graphfix.validate.retrace).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.broadcast import BROADCAST_OPS, input_dim_names, is_input_dim
from graphfix.analysis.constants import arange_axis
from graphfix.analysis.sinusoids import sinusoid_table
from graphfix.analysis.sizes import at_floors, own_floors, sizes_of

# a state_dict key, as the exporters keep a parameter's name (`m.embeddings.position_embeddings`, `pos_embed`); not a
# name made for a value (`onnx::Add_30`, `/Constant_output_0`, dynamo's `val_12` and `slice_3`)
PARAMETER_NAME = re.compile(r"[A-Za-z_]\w*(\.\w+)+|[A-Za-z_]+")
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

    def describe(self) -> str:
        """The finding's words: which op combines what with the constant, cut at which sizes."""
        sizes = ", ".join(f"{d}={self.value.shape[a]} on axis {a}" for a, d in self.axes)
        return (f"{self.node.op} '{self.node.name}' combines {self.other.name} {self.oshape} with constant "
                f"'{self.const.name}' {list(self.value.shape)} {'of' if self.whole else 'cut at'} export-time sizes "
                f"({sizes}): onnxruntime fails at other sizes")

    @property
    def whole(self) -> bool:
        """The constant keeps a parameter's own name (`m.embeddings.position_embeddings`): the model uses it whole.
        The TorchScript exporter names a table cut with a Python int and folded anew (`onnx::Add_30`)."""
        return isinstance(self.const, gs.Constant) and bool(PARAMETER_NAME.fullmatch(self.const.name))

    def lost(self) -> tuple[str, str]:
        """The words (the finding's end, its hint) for a constant no structure rebuilds. One used `whole` is the
        model's own size there, as in PyTorch (transformers' Hiera, timm's PiT; helper 114): nothing is cut."""
        if self.whole:
            return ("; it keeps the name of the model's own parameter, used whole: the model holds that many "
                    "positions and takes that one size there, as in PyTorch",
                    f"'{self.const.name}' is a parameter of the model used whole (a table cut with a Python int and "
                    "folded is named anew, `onnx::Add_30`): the dims are not dynamic; fix them with `graphfix "
                    "set-shape` and repair that. If the module does cut it (`self.pe[:, :int(x.size(1))]`), slice "
                    "it with the traced size (without int()) and re-export.")
        return ("; it is not recoverable: its values beyond the export length are gone from the graph",
                f"'{self.const.name}' is a table cut with a Python int and folded (`self.pe[:, :int(x.size(1))]`); "
                "slice it with the traced size, `self.pe[:, : x.size(1)]` (without int()), and re-export. If the "
                "model takes that one size only (timm's PiT holds a position table of one image size), the dims "
                "are not dynamic: fix them with `graphfix set-shape` and repair that.")

    def where(self) -> dict:
        """The nodes, tensors and shapes a finding on the constant names."""
        return {"nodes": [self.node], "tensors": [self.const, self.other],
                "shapes": {self.const.name: list(self.value.shape), self.other.name: self.oshape}}


def baked_operands(ctx) -> Iterator[Baked]:
    """Constant operands of broadcasting ops with an axis longer than 1 where another operand has a dynamic dim:
    a graph input's dim or an expression of them (one per constant: the first such operand). A dim that shape
    inference only named (`unk__0`, a Reshape's -1) counts where the size analysis finds it varies; one it finds
    fixed (a head count) meets a learned bias, not a size."""
    inputs = input_dim_names(ctx.model)
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
                        if lead + a >= 0 and value.shape[a] > 1 and _varies(ctx, other, lead + a, oshape, inputs)]
                if axes:
                    yield Baked(node, index, const, value, other, oshape, axes)
                    break


def expanded_constants(ctx) -> Iterator[Baked]:
    """Constants an Expand broadcasts with an axis longer than 1 where its target's entry is a size that varies:
    the Expand runs only where that size is the constant's. The TorchScript exporter writes an RNN's initial state
    `torch.zeros(L, int(B), H)` as `Expand(zeros[L, 2, H], [L, B, H])` (red team 99: repair refused it). Shape
    inference takes the constant's 2 for the output's dim; the size analysis reads the target. The Expand's output
    is `other` (a fix reads no Shape of it: only a uniform constant is shrunk, rule GF006)."""
    expands = [n for n in ctx.graph.nodes if n.op == "Expand" and len(n.inputs) > 1
               and (value := ctx.constant_value(n.inputs[0])) is not None and any(d > 1 for d in value.shape)]
    for node in expands:
        if sizes_of(ctx).fixed(node.inputs[1]):  # a constant target (BERT's `buffer.expand(1, 1)`): no size varies
            continue
        value, target = ctx.constant_value(node.inputs[0]), sizes_of(ctx).value(node.inputs[1])
        if not target or len(target) < value.ndim:
            continue
        lead = len(target) - value.ndim
        axes = [(a, str(target[lead + a])) for a in range(value.ndim)
                if value.shape[a] > 1 and getattr(target[lead + a], "free_symbols", None)]
        if axes:
            yield Baked(node, 0, node.inputs[0], value, node.outputs[0], [str(d) for d in target], axes)


def _varies(ctx, tensor: gs.Tensor, axis: int, shape: list, inputs: frozenset[str]) -> bool:
    dim = shape[axis]
    if not isinstance(dim, str):
        return False
    if is_input_dim(dim, inputs):
        return True
    derived = at_floors((sizes_of(ctx).shape(tensor) or [None] * len(shape))[axis], own_floors(ctx))
    return derived is not None and bool(derived.free_symbols)  # `x[:, 2:14]` traced for T >= 14: 12 long


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
    an arange from 0, a table's prefix, a sinusoidal table, a band); None otherwise."""
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
    sinusoid = sinusoid_table(baked.value, axes)
    if not isinstance(sinusoid, str):
        rows = sinusoid.values(shape[sinusoid.axis])
        return rows.astype(baked.value.dtype).reshape(shape)
    band = band_pattern(baked.value, axes)
    if isinstance(band, str):
        return None
    holds = band.holds(shape[-2], shape[-1])
    return np.where(holds, band.inside, band.outside).astype(baked.value.dtype).reshape(shape)


MASK_VALUES = "0/1, True/False, 0/-inf or 0 and a large negative number"


@dataclass(frozen=True)
class Band:
    """A mask over its last two axes (rows i, columns j): `inside` where `lo <= j - i <= hi`, `outside` elsewhere
    (`None`: no edge on that side).

    kind "tril": j - i <= k; "triu": j - i >= k; "eye": j - i == k (ONNX Trilu / EyeLike meanings); "band": both
    edges (a sliding window). `others` names what else gives the same constant at the export size: a mask that
    reaches the corner of the matrix along an axis that follows a size does not show its edge there (`tril` traced
    at T=4 is also every sliding window `0 <= i - j < w` with w >= 4)."""

    lo: int | None
    hi: int | None
    inside: np.ndarray  # 0-d, the constant's dtype
    outside: np.ndarray
    others: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        if self.lo is not None and self.lo == self.hi:
            return "eye"
        return "tril" if self.lo is None else "triu" if self.hi is None else "band"

    @property
    def k(self) -> int:
        """The Trilu / EyeLike offset (a band's upper one)."""
        return self.hi if self.hi is not None else self.lo

    def holds(self, rows: int, cols: int) -> np.ndarray:
        offset = np.arange(cols)[None, :] - np.arange(rows)[:, None]
        above = offset >= self.lo if self.lo is not None else np.ones_like(offset, bool)
        return above & (offset <= self.hi) if self.hi is not None else above

    def torch(self, size: str = "T", cols: str | None = None) -> str:
        """The PyTorch call that builds it, written with `size` (and `cols` where the columns differ)."""
        if self.kind == "eye" and cols is None:
            base = f"torch.eye({size})" if not self.k else f"torch.diag(torch.ones({size}-{abs(self.k)}), {self.k})"
        elif self.kind in ("eye", "band"):
            base = f"{_torch_full(size, self.inside, cols or size)}.tril({self.hi}).triu({self.lo})"
        else:
            k = f", {self.k}" if self.k else ""
            base = f"torch.{self.kind}({_torch_full(size, self.inside, cols or size)}{k})"
        return base if not self.outside else f"{base} (with {_torch_value(self.outside)} elsewhere)"

    def show(self) -> str:
        """'a triu mask (k=1): True inside, False elsewhere'-style text."""
        if self.kind == "band":
            noun = f"a band mask ({self.lo} <= j - i <= {self.hi}, a sliding window)"
        else:
            k = f" (k={self.k})" if self.k else ""
            noun = ("an eye (diagonal) matrix" if self.kind == "eye" else f"a {self.kind} mask") + k
        return f"{noun}: {_torch_value(self.inside)} inside, {_torch_value(self.outside)} elsewhere"


def band_pattern(value: np.ndarray, axes: Iterable[int]) -> Band | str:
    """The `Band` that `value` is over its last two axes, or why it is not one. Only a mask's two values qualify
    (`MASK_VALUES`): other numbers, such as a learned gain `[[0.3, -1.2]]`, are weights, never regrown."""
    axes = set(axes)
    if value.ndim < 2 or any(d != 1 for d in value.shape[:-2]):
        return f"{list(value.shape)} is not a matrix (leading dims must be 1)"
    if not axes or not axes <= {value.ndim - 2, value.ndim - 1}:
        return "its baked axes are not among its last two (a mask's rows or columns follow sizes)"
    matrix = value.reshape(value.shape[-2:])
    levels = np.unique(matrix)
    if levels.size != 2:
        return f"it holds {levels.size} distinct values, a mask holds 2"
    zero_at = 0 if levels[0] == 0 else 1 if levels[-1] == 0 else None
    zero, other = (levels[zero_at], levels[1 - zero_at]) if zero_at is not None else (None, None)
    if zero is None or not (other == 1 or np.isneginf(other) or other <= -1e4):
        return f"its values {_torch_value(levels[0])} and {_torch_value(levels[-1])} are not a mask's ({MASK_VALUES})"
    rows_grow, cols_grow = value.ndim - 2 in axes, value.ndim - 1 in axes
    found = [_band(matrix, inside, outside, rows_grow, cols_grow) for inside, outside in ((other, zero), (zero, other))]
    bands = [band for band in found if band is not None]
    if not bands:
        return "its two values do not form a triangle, a band or a diagonal"
    others = tuple(dict.fromkeys(text for band in bands for text in band.others))
    first = bands[0]
    return Band(first.lo, first.hi, np.asarray(first.inside, value.dtype), np.asarray(first.outside, value.dtype),
                others)


def _band(matrix: np.ndarray, inside, outside, rows_grow: bool, cols_grow: bool) -> Band | None:
    """`inside` as a band `lo <= j - i <= hi` of `matrix`, with an edge at the matrix's corner left open."""
    rows, cols = matrix.shape
    offsets = np.arange(cols)[None, :] - np.arange(rows)[:, None]
    where = matrix == inside
    if not where.any():
        return None
    lo, hi = int(offsets[where].min()), int(offsets[where].max())
    if not np.array_equal(where, (offsets >= lo) & (offsets <= hi)):
        return None
    lower, upper = lo == -(rows - 1), hi == cols - 1  # the band reaches the corner: its edge there is not shown
    value = _torch_value(np.asarray(inside))
    others = []
    if lower and rows_grow and not (upper and cols_grow):
        others.append(f"{value} where {hi} >= j - i >= l for any l <= {lo} (a sliding window of any width "
                      f">= {hi - lo + 1})")
    if upper and cols_grow and not (lower and rows_grow):
        others.append(f"{value} where {lo} <= j - i <= h for any h >= {hi} (a window of any width >= {hi - lo + 1})")
    return Band(None if lower else lo, None if upper else hi, inside, outside, tuple(others))


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


# a table computed from positions keeps one row per position through these (elementwise math, the outer product
# with the frequencies, stacking sin and cos, casts); a Slice is where it is cut to the length
_TABLE_OPS = frozenset({"Einsum", "Mul", "Div", "Add", "Sub", "Neg", "Cos", "Sin", "Exp", "Pow", "Cast", "Unsqueeze",
                        "Concat", "Reshape"})


def positions_cut_to_length(ctx, source, cap) -> tuple[tuple, list[tuple]] | str:
    """For folded positions arange(0, N) that cap a length (`cap`: the graph needs `T = Min(N, T)`): where the
    length comes from (a tensor and axis carrying T) and the Reshapes on the way that bake N in their shape, when
    every path from the positions is table arithmetic that ends in a Slice starting at 0; else why not."""
    if source.start != 0 or source.step != 1 or source.length != cap.limit:
        return f"{source.show()} is not the positions 0 .. {cap.limit - 1}"
    sizes = sizes_of(ctx)
    dim = next((found for t in cap.constraint.node.inputs if isinstance(t, gs.Variable)
                and (found := sizes.carrier(cap.symbol, t)) is not None), None)
    if dim is None:
        return f"no tensor before '{cap.constraint.node.name}' carries {cap.symbol}"
    reshapes, queue, seen, cuts = [], [source.tensor], set(), 0
    while queue:
        tensor = queue.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        for node in tensor.outputs:
            if node.op == "Slice" and node.inputs[0] is tensor:
                starts = ctx.constant_value(node.inputs[1])
                if starts is None or np.any(starts != 0):
                    return f"Slice '{node.name}' does not cut the table from its first row"
                cuts += 1
                continue
            if node.op not in _TABLE_OPS or (node.op == "Reshape" and node.inputs[0] is not tensor):
                return f"{node.op} '{node.name}' reads the positions"
            if node.op == "Reshape":
                entries = [e for e, v in enumerate(sizes.value(node.inputs[1]) or ()) if v == cap.limit]
                if len(entries) != 1:
                    return f"Reshape '{node.name}' has {len(entries)} entries of {cap.limit}"
                reshapes.append((node, entries[0]))
            queue.extend(node.outputs)
    if not cuts:
        return "no Slice cuts the table to the length"
    return dim, reshapes
