"""The sizes a model accepts: a strided Conv or Pool needs enough input for its kernel, a TopK for its k.

    least = input_minimums(model)   # {"samples": 55}: below it some Conv/Pool has fewer than FRAMES positions
                                    # ({"T": 11}: `h[:, 10]` reads position 10)

A front end (wav2vec2's seven strided Conv1d, a patch embedding, a ConvNeXt stem) fails in onnxruntime and in
PyTorch alike on an input shorter than its receptive field: such a size is outside the model, not a bug of the
export. The size analysis carries each input dim through Conv/Pool with exact floor arithmetic; the least size at
which every windowed output along a dim has `frames` positions bounds the probe sizes from below (several output
frames, not the bare minimum, so what follows the front end sees a real sequence).

A windowed op inside an If branch (asteroid's filterbank encoder, scripted: `Conv` on a 3-D input, else a
Reshape first) bounds the size too where it reads an outer tensor whose shape the analysis knows.

    steps = input_steps(model)  # {"2*h": (2, 0), "2*h + 1": (2, 1)}: torch.export declared 2 * h, 2 * h + 1

A dim torch.export declares `k * name + c` takes sizes k n + c only: the exporter checked the model for those. Not a
length a Reshape with -1 splits into whole chunks (`nn.PixelUnshuffle(2)`, frames stacked for a Linear): a head
split with the length baked (`q.reshape(B, int(T), H, -1)`), a chunk of the length baked and a pad to a multiple
that the trace dropped with its branch (`if T % 8: x = F.pad(...)`) leave such graphs too, wrong at other sizes
(red team 79), so a size that is no multiple is still probed there, and the error says how to probe multiples.
"""

from __future__ import annotations

import re

from graphfix.analysis.sizes.arith import window_output
from graphfix.analysis.sizes.ties import MAX_GROWN
from graphfix.core.lazy import sympy  # imported on first use: see graphfix.core.lazy
from graphfix.core.recent import per_model
from graphfix.io.protos import constant_values
from graphfix.io.torch_ranges import guarded_least

WINDOW_OPS = frozenset({"Conv", "MaxPool", "AveragePool"})
KEEP_OPS = frozenset({"TopK"})  # k of the axis kept: PyTorch's topk needs k positions too
FRAMES = 4


def input_minimums(model, frames: int = FRAMES, known: dict[str, int] | None = None) -> dict[str, int]:
    """`window_minimums`, and the least size torch.export traced a dynamo export for where it guarded one
    (`graphfix.io.torch_ranges`: a branch `if x.shape[1] >= 14:` kept under `T >= 14`; the graph computes what the
    module does from there on). Not a size it fixed (`int(x.shape[1])` under `Dim.AUTO`, [16, 16]): the probe
    shows what the graph does elsewhere, and GF016 says why."""
    least = window_minimums(model, frames, known)
    for name, low in guarded_least(model).items():
        least[name] = max(least.get(name, 1), low)
    return least


def window_minimums(model, frames: int = FRAMES, known: dict[str, int] | None = None) -> dict[str, int]:
    """Input dim name -> the least size at which every Conv/Pool output that depends on that dim alone has at least
    `frames` positions along it, and a position read at a fixed index is there (`h[:, 10]`: PyTorch fails below 11
    too, helper 129). Not an index that is the last position at a `known` export size: `h[:, int(T) - 1]` leaves
    the same graph, and a shorter probe is what shows it baked. Empty for graphs without a windowed op or a fixed
    index (nothing is analysed there)."""
    least: dict[str, int] = {}
    for symbol, length, need in _input_lengths(model):
        if need and symbol.name in (known or {}) and length.subs(symbol, known[symbol.name]) == need:
            continue
        size = least_size(length, symbol, frames) if not need else least_size(length, symbol, need)
        if size is not None:
            least[symbol.name] = max(least.get(symbol.name, 1), size)
    return least


def input_strides(model, export: dict[str, int]) -> dict[str, int]:
    """Input dim name -> how far past its `export` size it must grow before every Conv/Pool output that depends on
    it alone has grown by a position (a ViT's 16-pixel patch: 224 and 227 give the same 14 patches, and a probe
    there tells nothing the export size does not)."""
    strides: dict[str, int] = {}
    for symbol, length, need in _input_lengths(model):
        if symbol.name in export and not need:
            step = _growth(length, symbol, export[symbol.name])
            if step is not None:
                strides[symbol.name] = max(strides.get(symbol.name, 1), step)
    return strides


DERIVED = re.compile(r"^(\d+)\*[A-Za-z_]\w*(?: ([+-]) (\d+))?$")  # torch.export's `2*h`, `2*h + 1` (k * Dim + c)


def input_steps(model) -> dict[str, tuple[int, int]]:
    """Input dim name -> (k, c) where torch.export declared the dim `k * name + c` (k > 1): its sizes are k n + c."""
    steps: dict[str, tuple[int, int]] = {}
    for vi in model.graph.input:
        for dim in vi.type.tensor_type.shape.dim:
            derived = DERIVED.match(dim.dim_param)
            if derived and int(derived.group(1)) > 1:
                k, c = int(derived.group(1)), int(derived.group(3) or 0) * (-1 if derived.group(2) == "-" else 1)
                steps[dim.dim_param] = (k, c % k)
    return steps


@per_model  # the probe reads them where a size fails
def constraint_sides(model) -> list[tuple]:
    """(left, right, node name) of each constraint of the size analysis (`Sizes.constraints`): kept from the pass
    `input_minimums` ran on the same model (graphfix.validate.steps reads them where a probe size fails)."""
    from graphfix.analysis.sizes import static_sizes

    return _sides(static_sizes(model)[0])


def _sides(sizes) -> list[tuple]:
    return [(c.left, c.right, c.node.name) for c in sizes.constraints]


def joint_floors(model, binding: dict[str, int], toward: dict[str, int], frames: int = FRAMES) -> dict[str, int]:
    """Input dim name -> the size to raise it to where a windowed output depends on several input dims together (a
    Conv over `cat([a, b])`: `Ta + Tb`) and has fewer than `frames` positions at `binding`: the dims of such a
    length move together from `binding` toward `toward` (dims not in `toward` stay), as little as gives it
    `frames`. Empty where every such length has them, or where `toward` does not give them either.
    `input_minimums` bounds each dim alone: halving both inputs there may leave the Conv no input, where PyTorch
    fails too, and a bug between that size and the export size would go unprobed."""
    floors: dict[str, int] = {}
    for length in _joint_lengths(model):
        names = {symbol.name for symbol in length.free_symbols}
        if not names <= binding.keys():
            continue
        start = {name: max(floors.get(name, 0), size) for name, size in binding.items()}
        if _frames_at(length, start) >= frames:
            continue
        raised = _least_between(length, start, {name: max(toward.get(name, size), size)
                                                for name, size in start.items() if name in names}, frames)
        for name, size in (raised or {}).items():
            if size > binding[name]:
                floors[name] = max(floors.get(name, 0), size)
    return floors


def _least_between(length: sympy.Expr, low: dict[str, int], high: dict[str, int], frames: int,
                   parts: int = 256) -> dict[str, int] | None:
    """The sizes of `high`'s dims the fewest `parts`ths of the way from `low` to `high` at which `length` has
    `frames` positions (None where `high` does not give them)."""
    def at(part: int) -> dict[str, int]:
        return {**low, **{name: low[name] + -(-(size - low[name]) * part // parts) for name, size in high.items()}}

    if _frames_at(length, at(parts)) < frames:
        return None
    first, last = 0, parts
    while first < last:
        middle = (first + last) // 2
        first, last = (first, middle) if _frames_at(length, at(middle)) >= frames else (middle + 1, last)
    return {name: at(first)[name] for name in high}


def _frames_at(length: sympy.Expr, binding: dict[str, int]) -> float:
    value = length.subs({symbol: binding[symbol.name] for symbol in length.free_symbols})
    return float(value) if value.is_number else float("inf")  # a length the analysis cannot evaluate: unbounded


def _input_lengths(model) -> list:
    """(input dim symbol, length, need) of each windowed output that depends on one input dim alone (`need` 0), and
    of each axis read at a fixed index (`need`: the positions it takes)."""
    return [(next(iter(length.free_symbols)), length, need) for length, need in _window_lengths_of(model)
            if len(length.free_symbols) == 1]


def _joint_lengths(model) -> list:
    """The lengths of windowed outputs that depend on several input dims together."""
    return [length for length, need in _window_lengths_of(model) if len(length.free_symbols) > 1 and not need]


@per_model  # a proof asks for them at every probe_sizes
def _window_lengths_of(model) -> list:
    """Each distinct windowed output length that depends on input dims, and each length read at a fixed index (with
    the positions it needs), read where no constraint is upstream; the size analysis runs once per model for the
    minimums and the strides of every probe_sizes call."""
    found: list = []
    if _has_window(model.graph, _far_indices(model)):
        from graphfix.analysis.sizes import static_sizes

        sizes, graph = static_sizes(model)
        constraint_sides.keep(model, _sides(sizes))
        clear = _clear_of_constraints(graph, sizes)
        for node in clear:
            found.extend((length, 0) for length in _window_lengths(node, sizes)
                         if length is not None and length.free_symbols and (length, 0) not in found)
        found.extend(read for read in _fixed_index_reads(clear, sizes) if read not in found)
    return found


def _fixed_index_reads(nodes, sizes) -> list:
    """(length, positions needed) of each axis of a dynamic length that one Gather, alone, reads at a constant index
    (`h[:, 10]` needs 11, `h[:, -3]` 3). Not an axis read at several (an unrolled loop reads each of its steps:
    GF009's; a shorter probe is what shows it)."""
    reads: dict[tuple[int, int], list] = {}
    for node in nodes:
        if node.op != "Gather" or len(node.inputs) < 2 or (shape := sizes.shape(node.inputs[0])) is None:
            continue
        index, axis = sizes.value(node.inputs[1]), int(node.attrs.get("axis", 0))
        if index and len(index) == 1 and getattr(index[0], "is_Integer", False) and -len(shape) <= axis < len(shape):
            reads.setdefault((id(node.inputs[0]), axis % len(shape)), []).append((shape[axis], int(index[0])))
    found = []
    for ((length, index),) in (r for r in reads.values() if len(r) == 1):
        need = index + 1 if index >= 0 else -index
        if need > 1 and length is not None and length.free_symbols:
            found.append((length, need))
    return found


def _growth(length: sympy.Expr, symbol: sympy.Symbol, size: int, most: int = 1024) -> int | None:
    """The least d > 0 at which `length` at `size + d` exceeds its value at `size` (None past `most`)."""
    start = length.subs(symbol, size)
    if not start.is_number:
        return None
    low, high = 1, 1
    while length.subs(symbol, size + high) <= start:
        if high >= most:
            return None
        low, high = high + 1, min(high * 2, most)
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if length.subs(symbol, size + middle) > start else (middle + 1, high)
    return low


def _has_window(graph, far: set[str]) -> bool:
    """Whether a Conv or Pool, or a Gather of data (no shape vector) at a constant index of `far`, past the first and
    the last position, is in the graph or in a branch or body of one of its nodes."""
    shapes = {o for n in graph.node if n.op_type == "Shape" for o in n.output}
    return any(node.op_type in WINDOW_OPS | KEEP_OPS or (node.op_type == "Gather" and node.input[1:2] and
                                                         node.input[1] in far and node.input[0] not in shapes)
               or any(_has_window(a.g, far) for a in node.attribute if a.HasField("g")) for node in graph.node)


def _far_indices(model) -> set[str]:
    """The names of the model's one-element integer constants other than 0 and -1 (a position a Gather may
    need)."""
    return {name for name, value in constant_values(model).items()
            if value.size == 1 and value.dtype.kind in "iu" and int(value.reshape(-1)[0]) not in (0, -1)}


def _window_lengths(node, sizes) -> list:
    """The output lengths of a windowed node; of an If, those of the windowed ops in its branches that read an
    outer tensor of known shape (the branch taken computes one of them from the same input)."""
    if node.op in WINDOW_OPS and node.outputs:
        return list((sizes.shape(node.outputs[0]) or ())[2:])
    if node.op in KEEP_OPS and len(node.inputs) > 1:  # as a window of k: the positions past the first k, plus one
        shape, k = sizes.shape(node.inputs[0]), sizes.value(node.inputs[1])
        axis = node.attrs.get("axis", -1)
        if shape and k and len(k) == 1 and getattr(k[0], "is_Integer", isinstance(k[0], int)) and \
                -len(shape) <= axis < len(shape) and shape[axis] is not None:
            return [shape[axis] - int(k[0]) + 1]
        return []
    if node.op != "If":
        return []
    lengths = []
    for branch in (node.attrs.get("then_branch"), node.attrs.get("else_branch")):
        for inner in getattr(branch, "nodes", ()):
            if inner.op in WINDOW_OPS and inner.inputs:
                lengths.extend((window_output(inner, sizes.shape(inner.inputs[0]), _weight_shape(inner)) or ())[2:])
    return lengths


def _weight_shape(node) -> tuple | None:
    """A Conv's weight shape (None where unknown); `()` for a pool, which has none."""
    if node.op != "Conv":
        return ()
    shape = node.inputs[1].shape if len(node.inputs) > 1 else None
    return tuple(shape) if shape else None


def _clear_of_constraints(graph, sizes) -> list:
    """The nodes with no constraint upstream: behind a place where the graph fails at some sizes (the bug being
    diagnosed, a wrong broadcast) the analysis follows the broken shapes, and a length there bounds nothing."""
    broken = {id(c.node) for c in sizes.constraints}
    tainted: set[int] = set()
    clear = []
    for node in graph.nodes:  # topologically sorted
        if id(node) in broken or any(id(t) in tainted for t in node.inputs):
            tainted.update(id(t) for t in node.outputs)
        else:
            clear.append(node)
    return clear


def last_size_at_most(size: sympy.Expr, most: int) -> int | None:
    """The largest value of the one input dim `size` follows (non-decreasing in it) at which it is `most` or less:
    a threshold on an inner size (frames of a strided Conv's samples) in the input's units; None where `size`
    follows several dims or never passes `most`."""
    if len(size.free_symbols) != 1:
        return None
    least = least_size(size, next(iter(size.free_symbols)), most + 1)
    return least - 1 if least is not None else None


def least_size(length: sympy.Expr, symbol: sympy.Symbol, frames: int) -> int | None:
    """The least size of `symbol` at which `length` (non-decreasing in it, as a windowed op's output is) reaches
    `frames`; None when none up to MAX_GROWN does (a length the analysis cannot evaluate is left unbounded)."""
    def enough(size: int) -> bool:
        value = length.subs(symbol, size)
        return bool(value.is_number and value >= frames)

    if not enough(MAX_GROWN):
        return None
    low, high = 1, 1
    while not enough(high):
        low, high = high + 1, high * 2
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle + 1, high)
    return low
