"""Echoes of a baked size as an integer: a cut, a pick, a value, a kernel or repeats that equal a form of it.

The same int baked as an integer (helpers 57 and 61): where it picks or cuts along an axis of that size
(`x[:, T // 2]` a Gather index 3 at T = 7; `torch.roll(x, T // 2, 1)` Slice bounds -3; `x.topk(T // 2, 1)`),
where it meets an integer value that is no size (`lengths.clamp(max=T)`, `n + T`, `lengths < T`,
`where(lengths == 0, T, lengths)`, `(T - 1) - arange(T)`, `torch.full((B,), T - 1)`), as a Pool's kernel or
stride or a Tile's repeats (`avg_pool1d(x, T)`, `.repeat(1, T, 1)`), and in a step's forms as a pad, a Resize's
output size, an entry of a ConstantOfShape's shape or of an Expand's that spreads an axis of 1 along such an axis,
no weight's dim (`F.pad(h, (0, 0, 0, T))`, `interpolate(size=2 * T)`, `h.new_zeros(B, T // 2, D)`: red team 99;
`h.mean(1, keepdim=True).expand(-1, T, -1)`: red team 145; a shape's entry is the size itself, so no
constant beside a Shape there is the model's own). A tail's start (`h[:, T - k:]`) reads n - k for any k up to a
quarter of n too. Forms: n + k for k from -5 to 5, n // k
and ceil(n / k) for k from 2 to 4, 3n // 4, 2n // 3, 2n and their negatives for an index or a cut (`x[:, T // 4]`,
`x[:, :T - 4]`, red teams 40 and 41; a fifth or less of the size is not read: at 40 it is 8 or less, a model's own
offset as often), but for a step only n, n +- 1, a half and 2n (a third or a quarter is a strided front end's own
step: `x[:, 1::3]` reduces 40 frames to the 13 a Reshape bakes, so `x[:, :: T // 3]` at 12 is missed), for a
value beside data the forms of a cut, each element of a vector of up to 8 too (helpers 140 and 141: `arange(T) < T
// 2`, `>= T - 3`, `% (T // 4)`, `tensor([0, T // 2])`; a Range's start and step whatever its limit; a fill), n
for a kernel or repeats, those of a step but the size itself for a Reshape's entry beside a -1 that splits a
length (`h.reshape(B, T // 2, -1)`); a Trilu's diagonal is a cut of a square matrix's last two axes
(`scores.triu(-(T // 2))`); no value of magnitude 2 or less (`x[:, 1:]`, `x[:, -1]`, `x[:, ::2]`). An axis is a
length where it is dynamic or where its static size (past a baked Reshape, or in a static export) is no weight's
dim (a GLU's `z[..., :32]` of 64 features at T = 64 cuts features), or is one but is neither the last axis nor a
Conv's channels (helper 141: `h[:, :T - 1]` at 8 frames of 8 features; graphfix.analysis.length_axes). A
constant that meets a size is the model's own number beside it (`(T + 7) // 8`): a size is a value computed from a
Shape through a size's own arithmetic (SIZE_OPS), not data a Shape merely shaped, nor positions from a Range.
Along an axis that holds the size itself, static past a baked Reshape, a Resize's output size and a TopK's count
read any number (`interpolate(size=int(T * 1.5))`, `topk(int(0.3 * T))`, red team 113): a fixed 16 frames and
`int(T * 0.43)` leave the same graph there; so does a Resize's scale to a whole number of no small denominator
(`scale_factor=16 / T`, helper 115).
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.broadcast import named_length
from graphfix.analysis.length_axes import a_length, cuts_a_length, features_axis
from graphfix.analysis.sizes.ops import is_table
from graphfix.analysis.walk import within

SHIFTS = (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5)  # n + k: `T - 1` for an unbiased mean or the last position


def plus(k: int) -> str:
    return "{}" if k == 0 else f"{{}} {'+' if k > 0 else '-'} {abs(k)}"


INT_VALUES = (("{}", lambda n: n), ("{} - 1", lambda n: n - 1), ("{} + 1", lambda n: n + 1))
INT_HALVES = (("{} // 2", lambda n: n // 2), ("ceil({} / 2)", lambda n: (n + 1) // 2), ("2*{}", lambda n: 2 * n))
INT_PARTS = (*((f"{{}} // {k}", lambda n, k=k: n // k) for k in (3, 4)),
             *((f"ceil({{}} / {k})", lambda n, k=k: -(-n // k)) for k in (3, 4)),
             ("3*{} // 4", lambda n: 3 * n // 4), ("2*{} // 3", lambda n: 2 * n // 3),
             *((plus(k), lambda n, k=k: n + k) for k in SHIFTS if abs(k) > 1))


def _signed(forms: tuple) -> tuple:
    """The forms and their negatives (an index or a cut from the end)."""
    return (*forms, *((f"-({text})", lambda n, of=of: -of(n)) for text, of in forms))


INT_CUTS = _signed((*INT_VALUES, *INT_HALVES, *INT_PARTS))
# a value that meets positions or lengths reads the same forms (helpers 140 and 141: `arange(T) < T // 2`, `>= T -
# 3`, `.clamp(max=T // 4)`, `% (T // 4)`, `arange(T // 2, S + T // 2)`, `torch.full((B,), T // 2)`); a model's own
# window or offset is doubted at some lengths, and not at others (a 16-step clamp at 40 frames)
INT_VALUE_FORMS = INT_CUTS
# a tail's start: `h[:, T - k:]`, the last k frames, for any k up to a quarter of the size (red team 99 had `T - 6`
# written; a model's own start is a few prefix tokens, `x[:, 5:]`, or a chunk's hop: SepFormer's `x[..., 125:]` is
# doubted at 126 to 166 frames, and repaired past them)
TAIL_STARTS = (*INT_CUTS, *((plus(-k), lambda n, k=k: n - k if 4 * k <= n else None) for k in range(6, 4097)))
TAIL_END = 2 ** 62  # a Slice end past this runs to the end of the axis (the exporters write INT64_MAX)
# a step: a third or a quarter is every strided front end's own (`x[:, 1::3]` reduces 40 frames to the 13 a
# Reshape bakes, and 3 is 13 // 4), so a step reads the size, its neighbours, its half and its double only
STEP_CUTS = _signed((*INT_VALUES, *INT_HALVES))
# a pad, an output size or a shape's entry too: a causal Conv's pad of 6 is 24 // 4, a head count of 4 is
# ceil(11 / 3), 16 register tokens are 50 // 3 (helper 101)
SIZE_FORMS = STEP_CUTS
PLAIN_FORMS = frozenset(text for text, _ in STEP_CUTS)
INT_KERNELS = INT_CUTS[:1]
CUT_INPUTS = {"Gather": (1,), "Slice": (1, 2, 4), "TopK": (1,), "Trilu": (1,)}  # the inputs that index or cut data
# (a Trilu's diagonal is a cut of its last two axes: `scores.triu(-(T // 2))`, helper 140)
VALUE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Mod", "Clip", "Min", "Max", "Less", "LessOrEqual", "Greater",
                       "GreaterOrEqual", "Equal", "Range", "Where"})
# the ops of a size's own arithmetic (`(T + 7) // 8`, a shape vector): a constant meeting their value meets a size
SIZE_OPS = frozenset({"Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape", "Add",
                      "Sub", "Mul", "Div", "Mod", "Neg", "Floor", "Ceil", "Min", "Max"})
POOLS = frozenset({"AveragePool", "MaxPool", "LpPool"})
VECTOR_MAX = 8  # the elements of an integer vector read as values, each (not a table of relative positions)
SHAPE_HOPS = 8  # ops walked up from a value to a Shape that sizes it


def int_echoes(nodes: list[gs.Node], wanted: list[int], constant_value, shape, fixed, lengths: list[int],
               fold=None, widths: set[int] = frozenset(), products: frozenset[int] = frozenset()) -> list[str]:
    """Integer constants that index or cut data along an axis of the size, meet an integer value that is no
    size, fill a ConstantOfShape, size a Pool or repeat a Tile (the forms of the module's docstring). `fold`: the
    values of tensors computed from constants only (a Pad's amounts, which the TorchScript exporter computes from
    the tuple `F.pad` was given), where the caller has them; else only constants are read. `widths`: the graph's
    feature widths, which no entry of a ConstantOfShape's shape is read as a form of the size at. `products`: the
    sizes of `wanted` that are products of several (a grid's H * W = 120 cells): a cut, index or step by a factor
    of one is a row or a column (`h[:, :, :W]`, `h[:, :, ::W]`, helper 115), its factor baked too."""
    return [line for _, line in int_echo_reads(nodes, wanted, constant_value, shape, fixed, lengths, fold, widths,
                                               products)]


def int_echo_reads(nodes: list[gs.Node], wanted: list[int], constant_value, shape, fixed, lengths: list[int],
                   fold=None, widths: set[int] = frozenset(), products: frozenset[int] = frozenset(),
                   plain: bool = False) -> Iterator[tuple[gs.Node, str]]:
    """`int_echoes`, each line with the node that reads the integer. `plain`: only the size, one less or more, a
    half or twice it, or their negatives (a model's own `h[:, 10]` at 16 frames is 2*16 // 3: doubt enough beside a
    fix, noise alone)."""
    # a size that is also a weight's dim: past a baked Reshape an axis of it may be the length (helper 141: `h[:,
    # :T - 1]` at 8 frames of 8 features), so it is one where it is no axis of features (`features_axis`)
    either = frozenset() if plain else frozenset(wanted) & frozenset(widths) - frozenset(lengths)
    for node in nodes:
        for where, item, forms in _int_reads(node, constant_value, shape, lengths, fold or constant_value, widths,
                                             either):
            forms = tuple(form for form in forms if form[0] in PLAIN_FORMS) if plain else forms
            if item in wanted and fixed(node):
                continue  # the fix's own constant
            form = next((text.format(n) for n in wanted for text, of in forms if of(n) == item), None) or next(
                (f"a factor of {n}, a row or a column of a grid of {n} cells" for n in products
                 if where in ("a cut", "an index") and 2 < abs(item) < n and n % abs(item) == 0), None)
            if form is not None:
                yield node, f"{node.op} '{node.name}' reads the integer {item} as {where}, which is {form}"
                break


def _int_reads(node: gs.Node, constant_value, shape, lengths: list[int], fold, widths: set[int] = frozenset(),
               either: frozenset[int] = frozenset()) -> Iterator[tuple[str, int, tuple]]:
    """(what the node reads it as, the integer, the forms to match) for each one-element integer constant it
    reads as a size (and each element of a Tile's repeats), skipping magnitudes of 2 or less."""
    def small_int(tensor, integral: bool = False) -> int | None:
        """Its one integer (or, with `integral`, a float that is one: `torch.full` fills floats), if above 2."""
        value = constant_value(tensor) if is_table(tensor) else None
        kinds = "iuf" if integral else "iu"
        if value is None or value.size != 1 or value.dtype.kind not in kinds:
            return None
        number = value.reshape(-1)[0]
        if not np.isfinite(number) or number != int(number):
            return None
        return int(number) if abs(int(number)) > 2 else None

    def small_ints(tensor) -> list[int]:
        """The integers above 2 of a constant of 2 to VECTOR_MAX elements."""
        value = constant_value(tensor) if is_table(tensor) else None
        if value is None or not 1 < value.size <= VECTOR_MAX or value.dtype.kind not in "iu":
            return []
        return [int(v) for v in value.reshape(-1) if abs(int(v)) > 2]

    if node.op in CUT_INPUTS and node.inputs:
        tail = node.op == "Slice" and _runs_to_the_end(node, constant_value)
        items = [(small_int(node.inputs[i]), STEP_CUTS if (node.op, i) == ("Slice", 4) else
                  TAIL_STARTS if (tail and i == 1) else INT_CUTS)
                 for i in CUT_INPUTS[node.op] if i < len(node.inputs)]
        if node.op == "TopK" and items and items[0][0]:  # the top frames' count (an attribute before opset 10)
            dims = shape(node.inputs[0])
            axis = int(node.attrs.get("axis", -1))
            if dims is not None and -len(dims) <= axis < len(dims):
                items = [(items[0][0], (*INT_CUTS, *any_number(dims[axis], items[0][0])))]
        if any(item for item, _ in items) and cuts_a_length(node, constant_value, shape(node.inputs[0]), lengths,
                                                             either) \
                and not _is_size(node.inputs[0]):
            yield from ((f"{'an index' if node.op == 'Gather' else 'a cut'}", item, forms) for item, forms in items
                        if item)
    elif node.op == "Range":  # its start and step are positions' own, whatever its limit (`arange(4, T + 4)`)
        items = [small_int(tensor) for tensor in node.inputs[:1] + node.inputs[2:3]]
        yield from (("a value", item, INT_VALUE_FORMS) for item in items if item)
    elif node.op in VALUE_OPS:
        # the forms of a value where the node meets data and builds no shape; the size and its neighbours only,
        # as before, for arithmetic of constants the exporter left (nn.MultiheadAttention's `Mod(10, 3)`, which
        # meets no value) and for what becomes a shape (TorchScript's `expand(int(B), int(T), D)` compares its
        # own shape vector with -1s)
        data = [t for t in node.inputs if not is_table(t)]
        shaping = bool(data) and _shapes_a_shape(node.outputs[0])
        forms = INT_VALUE_FORMS if data and not shaping else INT_VALUES if node.op != "Mod" else ()
        items = [small_int(tensor) for tensor in node.inputs]
        if data and not shaping:  # integers beside data, each a value (segment starts `tensor([0, T // 2])`)
            items += [item for tensor in node.inputs for item in small_ints(tensor)]
        if any(items) and not any(_is_size(t) for t in data):
            yield from (("a value", item, forms) for item in items if item)
    elif node.op in ("Expand", "Tile") and node.inputs and (item := small_int(node.inputs[0])) is not None \
            and not _shapes_a_shape(node.outputs[0]):  # a value spread over the batch: lengths a model builds,
        yield "a value it spreads", item, INT_VALUE_FORMS  # `tensor([T]).expand(B)` (helper 142)
    elif node.op == "Expand" and len(node.inputs) > 1 and not _shapes_a_shape(node.outputs[0]):
        yield from ((where, item, forms) for where, item, forms in _spread(node, fold, shape, lengths)
                    if item not in widths)
    elif node.op == "Tile" and len(node.inputs) > 1 and is_table(node.inputs[1]):
        repeats = constant_value(node.inputs[1])
        if repeats is not None and repeats.dtype.kind in "iu" and repeats.size <= 8:
            yield from (("its repeats", int(r), INT_KERNELS) for r in repeats.reshape(-1) if abs(int(r)) > 2)
    elif node.op == "ConstantOfShape":
        item = small_int(node.attrs["value"], integral=True) if isinstance(node.attrs.get("value"), gs.Constant) \
            else None
        if item is not None:
            yield "the value it fills", item, INT_VALUE_FORMS
        # its own output's dims are its entries: each is read where it is no feature width (`new_zeros(B, T // 2, D)`),
        # but a vector that becomes a shape is as long as a rank (TorchScript's `expand(-1, n, -1)`: ones(3) * -1)
        if _shapes_a_shape(node.outputs[0]):
            return
        yield from ((where, item, forms) for where, item, forms in _entries(node.inputs[0], None, "an entry of its "
                                                                            "shape", fold, lengths)
                    if item not in widths)
    elif node.op == "Reshape" and len(node.inputs) > 1:
        yield from _split_entries(node, fold, shape(node.inputs[0]), lengths, either)
    elif node.op == "Pad":
        yield from _pads(node, fold, shape, lengths, widths)
    elif node.op == "Resize" and len(node.inputs) > 3 and node.inputs[3].name:
        yield from _entries(node.inputs[3], shape(node.inputs[0]), "its output size", fold, lengths, anything=True)
    elif node.op == "Resize" and len(node.inputs) > 2:
        yield from _scaled_to(node, fold, shape(node.inputs[0]), lengths)
    elif node.op in POOLS:
        for attr in ("kernel_shape", "strides"):
            for item in node.attrs.get(attr) or ():
                if abs(int(item)) > 2:
                    yield f"its {attr}", int(item), INT_KERNELS


def _runs_to_the_end(node: gs.Node, constant_value) -> bool:
    """Whether a Slice's ends are all past any axis (`h[:, c:]`, the exporters' INT64_MAX)."""
    ends = constant_value(node.inputs[2]) if len(node.inputs) > 2 and is_table(node.inputs[2]) else None
    return ends is not None and ends.size > 0 and bool((ends >= TAIL_END).all())


def _scaled_to(node: gs.Node, fold, dims: list | None, lengths: list[int]) -> Iterator[tuple[str, int, tuple]]:
    """A Resize's scale along an axis that holds the length itself (static, past a baked Reshape, or named and no
    batch's, at each of `lengths`) whose output there is a whole number over a scale of no small denominator:
    `interpolate(scale_factor=16 / T)` resizes 13 frames to 16 by 1.2308, the fixed 16 frames `size=16` gives
    (helpers 115 and 120); a model's own 1.5 or 2 is none."""
    scales = fold(node.inputs[2]) if node.inputs[2].name else None
    if scales is None or dims is None or scales.dtype.kind != "f" or scales.size != len(dims):
        return
    for dim, scale in zip(dims, (float(v) for v in scales.reshape(-1)), strict=True):
        if Fraction(scale).limit_denominator(64).denominator <= 4:
            continue
        if isinstance(dim, int):
            sizes = [dim] if dim in lengths else []
        else:
            sizes = lengths if named_length(dim) else []
        for size in sizes:
            out, whole = size * scale, round(size * scale)
            if out > 2 and abs(out - whole) < 1e-4 * out:
                yield "its output size by a scale", whole, ((
                    f"a number a function of {{}} may give (resized by {scale:.6g}: the graph does not say whether "
                    f"{whole} is the model's own)", lambda n, size=size, whole=whole: whole if n == size else None),)


def any_number(dim, item: int) -> tuple:
    """A form that any number takes where an axis holds the length itself, static (`dim`, past a baked Reshape) or
    named and no batch's (the raw input's `T`, helper 115): a count of frames kept (`topk(int(0.3 * T))`) or a
    resized length (`interpolate(size=int(T * 1.5))`) there is the model's own or a function of the length, and
    the graph does not say which (red team 113)."""
    if isinstance(dim, int):
        return ((f"a number a function of {{}} may give (along an axis of {dim}: the graph does not say whether "
                 f"{item} is the model's own)", lambda n: item if n == dim else None),)
    if named_length(dim):
        return ((f"a number a function of {{}} may give (along the axis '{dim}': the graph does not say whether "
                 f"{item} is the model's own)", lambda n: item),)
    return ()


def _entries(vector: gs.Tensor, dims: list | None, where: str, fold, lengths: list[int], anything: bool = False
             ) -> Iterator[tuple[str, int, tuple]]:
    """The integer entries above 2 of a vector with one entry per axis (a shape, a Resize's output size), written
    as a constant or as a Concat of pieces some of which are constants (`new_zeros(B, T, D)`: `[B] ++ [37, 8]`),
    along the axes of `dims` that a size can be baked along; with `anything`, any entry along an axis of the
    length itself (`any_number`). A shape's entry is the size itself, not a number beside one: no `_is_size`
    exemption."""
    entries, _ = _vector_entries(vector, fold)
    for axis, item in enumerate(entries):
        if item is not None and abs(item) > 2 and a_length(dims, axis, lengths):
            own = any_number(dims[axis], item) if anything and dims else ()
            yield where, item, (*SIZE_FORMS, *own)


def _split_entries(node: gs.Node, fold, dims: list | None, lengths: list[int], either: frozenset[int]
                   ) -> Iterator[tuple[str, int, tuple]]:
    """The constant entries of a Reshape's shape beside a -1 that split an axis of its input that holds a length
    (`h.reshape(B, T // 2, -1)`: it runs at every length and keeps the export's number, helpers 140 and 141), as
    the forms of a step but the size itself (a baked entry equal to the size is GF004's, fixed on its own)."""
    entries, whole = _vector_entries(node.inputs[1], fold)
    if dims is None or not whole or -1 not in entries:
        return
    for axis, item in enumerate(entries[:len(dims)]):
        if item is None or abs(item) <= 2 or item == dims[axis]:
            continue
        if a_length(dims, axis, lengths) or (dims[axis] in either and not features_axis(node.inputs[0], axis,
                                                                                      len(dims))):
            yield "an entry of its shape beside a -1", item, SPLIT_FORMS


def _spread(node: gs.Node, fold, shape, lengths: list[int]) -> Iterator[tuple[str, int, tuple]]:
    """The entries of an Expand's shape that spread an axis of 1 (or none) of its input along a length, no weight's
    dim: `h.mean(1, keepdim=True).expand(-1, T, -1)` spreads a mean over T frames (helper 145), as a ConstantOfShape
    of that shape would."""
    entries, _ = _vector_entries(node.inputs[1], fold)
    dims = shape(node.inputs[0])
    if dims is None:
        return
    for axis, item in enumerate(entries):
        own = axis - (len(entries) - len(dims))
        if item is not None and abs(item) > 2 and (own < 0 or dims[own] == 1) \
                and a_length(shape(node.outputs[0]), axis, lengths):
            yield "an entry of its shape", item, SIZE_FORMS


def _vector_entries(vector: gs.Tensor, fold) -> tuple[list[int | None], bool]:
    """The entries of a vector with one entry per axis, a constant or a Concat of pieces (None where a piece is
    computed or no integer), up to the first piece of unknown length; and whether every piece was read."""
    pieces = [vector] if fold(vector) is not None or not vector.inputs or vector.inputs[0].op != "Concat" \
        else vector.inputs[0].inputs
    entries: list[int | None] = []
    for piece in pieces:
        value = fold(piece)
        width = value.size if value is not None else _length(piece)
        if width is None:
            return entries, False  # the axes of what follows are unknown
        integral = value is not None and value.dtype.kind in "iu"
        entries += [int(v) for v in value.reshape(-1)] if integral else [None] * width
    return entries, True


SPLIT_FORMS = tuple(form for form in SIZE_FORMS if form[0] not in ("{}", "-({})"))


def _pads(node: gs.Node, fold, shape, lengths: list[int], widths: set[int]) -> Iterator[tuple[str, int, tuple]]:
    """A Pad's amounts along the axes a size can be baked along (`F.pad(h, (0, 0, 0, T))`, red team 99): its
    `pads` input (or attribute, before opset 11), begins then ends, over its `axes` (opset 18) or every axis."""
    pads = fold(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else node.attrs.get("pads")
    if pads is None and len(node.inputs) > 1 and node.inputs[1].name:
        yield from (("a pad", item, SIZE_FORMS) for item in _pieces(node.inputs[1], fold) if item not in widths)
        return
    if pads is None or np.asarray(pads).dtype.kind not in "iu":
        return
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    axes = fold(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
    axes = [int(a) for a in axes.reshape(-1)] if axes is not None else list(range(len(pads) // 2))
    dims = shape(node.inputs[0])
    for index, item in enumerate(pads):
        if abs(item) > 2 and axes and a_length(dims, axes[index % len(axes)], lengths):
            yield "a pad", item, SIZE_FORMS


PIECE_HOPS = 8  # ops walked up from a Pad's amounts to the pieces the TorchScript exporter concatenates
REORDERS = frozenset({"Cast", "Reshape", "Transpose", "Slice", "Concat", "Unsqueeze", "Squeeze", "Identity"})


def _pieces(amounts: gs.Tensor, fold) -> Iterator[int]:
    """The integers above 2 of the constant pieces of amounts some of which are computed: the TorchScript exporter
    concatenates `F.pad`'s tuple (a constant `t // 2` beside `h.shape[1] // 2`, helper 100), then reverses and
    reorders it (Reshape, Slice, Transpose): which axis each pads is not kept, so every piece is read."""
    frontier, seen = [amounts], set()
    for _ in range(PIECE_HOPS):
        step = []
        for tensor in frontier:
            producer = tensor.inputs[0] if tensor.inputs else None
            if producer is None or producer.op not in REORDERS or id(producer) in seen:
                continue
            seen.add(id(producer))
            for source in producer.inputs if producer.op == "Concat" else producer.inputs[:1]:
                value = fold(source) if is_table(source) else None
                if value is not None and value.dtype.kind in "iu" and value.size <= 16:
                    yield from (int(v) for v in value.reshape(-1) if abs(int(v)) > 2)
                elif value is None:
                    step.append(source)
        frontier = step


def _length(tensor: gs.Tensor) -> int | None:
    """The number of entries of a 1-D piece of a shape vector, where known."""
    dims = tensor.shape
    return dims[0] if dims is not None and len(dims) == 1 and isinstance(dims[0], int) else None


SHAPE_INPUTS = {"Expand": 1, "Reshape": 1, "ConstantOfShape": 0, "Tile": 1}  # the input that is a shape vector


def _shapes_a_shape(tensor: gs.Tensor) -> bool:
    """Whether the tensor's values become a shape vector within SHAPE_HOPS ops of a size's own arithmetic, a
    comparison or a Where (the TorchScript exporter's `expand(-1, n, -1)` compares its shape with `ones(3) * -1`)."""
    def reads_a_shape(op: gs.Node, read: gs.Tensor) -> bool:
        slot = SHAPE_INPUTS.get(op.op)
        return slot is not None and slot < len(op.inputs) and op.inputs[slot] is read

    return within([tensor], SHAPE_HOPS, reads_a_shape, lambda op: op.op in SIZE_OPS | {"Equal", "Where"})


def _is_size(tensor: gs.Tensor) -> bool:
    """Whether the tensor is a size or a shape vector: computed from a Shape or Size op within SHAPE_HOPS ops of
    a size's own arithmetic (SIZE_OPS). A constant meeting it is the model's own number beside a size
    (`(T + 7) // 8`). Not data that a shape merely shaped (an attention output reshaped with `x.shape[0]`), nor
    positions (`(T - 1) - arange(T)`: a Range's output is data)."""
    return within([tensor], SHAPE_HOPS, lambda op, _: op.op in ("Shape", "Size"), lambda op: op.op in SIZE_OPS,
                  lambda op: op.inputs if op.op != "Reshape" else op.inputs[:1], up=True)
