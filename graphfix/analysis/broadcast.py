"""Numpy-style broadcasting checks on symbolic shapes: which ops broadcast, the verdict on one pair of
right-aligned dims, which nodes are worth the size analysis, and where a lower-rank operand may lie on the other.
(How findings word them: graphfix.analysis.broadcast_text.)

Rules use `ctx.unmerged_shapes`, not `ctx.symbolic_shapes`: auto-merge *merges* the symbols of a pair that cannot
broadcast. On `Where(mask[B,T], 0, x[B,T,768])` it rewrites every B and T of the model (graph inputs included) to
768, so the very defect we look for erases its own evidence.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from enum import Enum

import onnx

log = logging.getLogger(__name__)

# Multidirectional (numpy) broadcasting in the ONNX spec; all of them align shapes on the trailing dims.
BROADCAST_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Mean", "Sum",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor",
    "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Where",
})

# names of a batch beyond an input's leading dim (PyTorch's `(L, N, E)`); a lowercase `n` or `num_samples` is as
# often a length, probed at 1 as a batch it made healthy conv front ends fail (sweep, helper 34)
# surely a batch: where taking a length for one would hide a bug. A name holding the word (`batch_size`,
# `minibatch`, `dynamic_batch`) or a batch's short names (`B`, `bs`, `bsz`), but not one that also names a length:
# `batch_frames` is a time axis (helper 102), and `input_batch` still a batch (helper 105).
BATCH_NAME = re.compile(r"(?i:^(?!.*(?:frame|time|seq|len|token|sample|step|width|height|pos|chan|feat|word))"
                        r"(?:.*batch.*|b|bs|bsz)$)")
Dim = int | str | None
# Names sympy prints in onnxruntime's dim expressions ("floor(T/2) + 1"); they are not dims.
_SYMPY_NAMES = frozenset({"floor", "ceiling", "Max", "Min", "Mod", "CeilToInt", "FloorToInt", "Abs", "sqrt"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def batch_named(names: Iterable[Dim]) -> set[str]:
    """The dims of one input (`names`, axis by axis) named like a batch: a batch's own name (BATCH_NAME), or `N`
    where none is (PyTorch's `(L, N, E)`). In `[batch, N]` the N is a length: wav2vec2's samples named so were
    probed at 1 as a batch, where its strided Conv has no input (helper 82)."""
    named = [name for name in names if isinstance(name, str)]
    return {name for name in named if BATCH_NAME.search(name)} or {name for name in named if name == "N"}


def input_dim_names(model: onnx.ModelProto) -> frozenset[str]:
    """The dim_params of the graph inputs: the sizes a user may vary."""
    names = set()
    for vi in model.graph.input:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param:
                names.add(dim.dim_param)
    return frozenset(names)


def is_input_dim(dim: Dim, inputs: frozenset[str]) -> bool:
    """True for a named input dim or an expression of them ("T", "2*T", "floor(T/2) + 1")."""
    if not isinstance(dim, str) or dim.startswith("unk__"):
        return False
    idents = set(_IDENT.findall(dim)) - _SYMPY_NAMES
    return bool(idents) and idents <= inputs


def merge_shape(primary: list[Dim] | None, fallback: list[Dim] | None) -> list[Dim] | None:
    """Per dim, the first known value (int or name that is not `unk__N`) of the two shapes of one tensor."""
    if primary is None or (fallback is not None and len(fallback) != len(primary)):
        return fallback
    if fallback is None:
        return primary
    return [p if _known(p) else f for p, f in zip(primary, fallback, strict=True)]


def _known(dim: Dim) -> bool:
    return isinstance(dim, int) or named(dim)


def named(dim: Dim) -> bool:
    """A symbolic dim with a name of its own (an input's `T`), not one shape inference made up (`unk__5`)."""
    return isinstance(dim, str) and not dim.startswith("unk__")


def named_length(dim: Dim) -> bool:
    """A dim `named` and not like a batch (BATCH_NAME): a length a size baked along may be read along (the echo
    check's softmax, resize and top-k along the raw input's `T`)."""
    return named(dim) and not BATCH_NAME.search(dim)


class Pair(str, Enum):
    """The verdict on two right-aligned dims."""

    OK = "ok"  # equal, or one of them is 1
    UNKNOWN = "unknown"  # not enough information (an unknown dim, two names that may be equal)
    CONFLICT = "conflict"  # two different static sizes, neither 1: fails at every input size
    PINNED = "pinned"  # a static size against a dynamic input dim: runs only when that dim is 1 or that size
    MISALIGNED = "misaligned"  # two different input dims, one of which sits at another position of the other


def pair_verdict(a: Dim, b: Dim, a_shape: list[Dim], b_shape: list[Dim], inputs: frozenset[str]) -> Pair:
    if a == b or a == 1 or b == 1:
        return Pair.OK
    if isinstance(a, int) and isinstance(b, int):
        return Pair.CONFLICT
    if (isinstance(a, int) and is_input_dim(b, inputs)) or (isinstance(b, int) and is_input_dim(a, inputs)):
        return Pair.PINNED
    if is_input_dim(a, inputs) and is_input_dim(b, inputs) and (a in b_shape or b in a_shape):
        return Pair.MISALIGNED
    return Pair.UNKNOWN


def right_aligned(a_shape: list[Dim], b_shape: list[Dim]) -> list[tuple[int, Dim, Dim]]:
    """(axis of the broadcast result, dim of a, dim of b) for the axes both shapes have, numpy-style."""
    rank = max(len(a_shape), len(b_shape))
    pairs = []
    for k in range(1, min(len(a_shape), len(b_shape)) + 1):
        pairs.append((rank - k, a_shape[-k], b_shape[-k]))
    return pairs[::-1]


def leading_match(small: list[Dim], big: list[Dim]) -> tuple[bool, list[int]]:
    """Whether `small` equals the leading dims of `big`, and the axes where the proof rests on equal static ints
    other than 1 (those may be trace-time sizes that only coincide)."""
    if len(small) >= len(big):
        return False, []
    static = []
    for axis, (s, b) in enumerate(zip(small, big, strict=False)):
        if s != b or not _known(s):
            return False, []
        if isinstance(s, int) and s != 1:
            static.append(axis)
    return True, static


MAX_ALIGNMENTS = 16  # past these, "more than one" is all a caller learns: their count may be C(64, 32)


def alignments(small: list[Dim], big: list[Dim]) -> list[tuple[int, ...]]:
    """The ways to lay `small`'s dims on axes of `big` in order, each on an equal known dim: `[B, T]` fits
    `[B, T, C]` one way (axes 0, 1) and `[B, T, T]` two ways (0, 1 and 0, 2). In the order of
    `itertools.combinations`, at most MAX_ALIGNMENTS of them, and only along placements that can still be
    completed: trying every combination of axes made a 319-byte model (a rank-21 operand of equal dims added to
    a rank-41 one) run for hours (helper 60)."""
    n, m = len(small), len(big)
    fits = [[_known(s) and s == b for b in big] for s in small]
    completes: dict[tuple[int, int], bool] = {}
    for i in range(n, -1, -1):  # completes[i, j]: small[i:] can be laid on big[j:]
        for j in range(m, -1, -1):
            completes[i, j] = i == n or (m - j >= n - i and (
                (fits[i][j] and completes[i + 1, j + 1]) or completes[i, j + 1]))
    found: list[tuple[int, ...]] = []

    def lay(i: int, start: int, axes: tuple[int, ...]) -> None:
        if i == n:
            found.append(axes)
            return
        for a in range(start, m - (n - i) + 1):
            if len(found) >= MAX_ALIGNMENTS:
                return
            if fits[i][a] and completes[i + 1, a + 1]:
                lay(i + 1, a + 1, (*axes, a))

    if completes[0, 0]:
        lay(0, 0, ())
    return found


def closest_to_right(choices: list[tuple[int, ...]], small_rank: int, big_rank: int) -> tuple[int, ...]:
    """The alignment that keeps the most dims where right alignment (what onnxruntime does) puts them: it moves
    only the dims that pair wrongly, so it computes what the original computes at sizes where those are 1."""
    right = range(big_rank - small_rank, big_rank)
    return max(choices, key=lambda axes: (sum(a == r for a, r in zip(axes, right, strict=True)), axes))


# Operands of one shape are paired once (equal dims never mismatch), so real ops, with two or three operands, pair
# a handful of shapes; a crafted `Sum` of thousands of differently shaped inputs would pair each with each.
MAX_NODE_SHAPES = 16  # distinct operand shapes of one node that a rule pairs; past it the node is not checked


def operand_pairs(shapes: list[list[Dim]], inputs: frozenset[str]) -> list[tuple[int, int, int, Dim, Dim, Pair]]:
    """(operand i, operand j, axis, dim of i, dim of j, verdict) for every pair of operands of different shapes (the
    first operand of each shape stands for the others: equal dims are never a mismatch) and shared axis."""
    firsts = distinct_shapes(shapes)
    out = []
    for k, i in enumerate(firsts):
        for j in firsts[k + 1:]:
            for axis, a, b in right_aligned(shapes[i], shapes[j]):
                out.append((i, j, axis, a, b, pair_verdict(a, b, shapes[i], shapes[j], inputs)))
    return out


def distinct_shapes(shapes: list[list[Dim] | None]) -> list[int]:
    """The index of the first operand of each distinct shape, in operand order: `Sum(x, x, ..., x)` has one."""
    first: dict[tuple[Dim, ...] | None, int] = {}
    for i, shape in enumerate(shapes):
        first.setdefault(None if shape is None else tuple(shape), i)
    return list(first.values())


# --- which nodes are worth the size analysis, and how a lower-rank operand is laid on the other ---------------
BAD_PAIRS = (Pair.CONFLICT, Pair.PINNED, Pair.MISALIGNED)  # pairs that fail, or run at one size only


def as_declared(ctx, node, shapes: list[list[Dim] | None], inputs: frozenset[str]) -> list[list[Dim] | None]:
    """Where the node writes a graph output whose dims the export declared (`[batch, frames, 768]`), an operand of
    the output's rank has, on each axis, either 1 or the output's dim: a computed size there (`floor(T/320)`, a dim
    onnx could not name) is the declared name."""
    out = node.outputs[0]
    declared = ctx.shape(out) if out.name in ctx.graph_output_names else None
    if not declared:
        return shapes
    unified = []
    for shape in shapes:
        if shape is not None and len(shape) == len(declared):
            shape = [d if d == 1 or not is_input_dim(name, inputs) or isinstance(d, int) else name
                     for d, name in zip(shape, declared, strict=True)]
        unified.append(shape)
    return unified


def doubtful(shapes: list[list[Dim]], inputs: frozenset[str]) -> bool:
    """Whether some right-aligned pair is worth symbolic inference: not plainly fine (equal, or a 1), and not a
    dim onnx lost track of in operands of equal rank. onnx's inference folds constant shapes, so a baked size
    shows up as a number, not as a lost dim; what it loses is computed at run time from the input, which a
    lower-rank operand (the `x[mask]` mask) can still misalign. Refining every residual `Add` of a transformer
    whose attention hid T would cost more than the whole rest of a static diagnose."""
    for i, j, _, a, b, verdict in operand_pairs(shapes, inputs):
        if verdict is Pair.OK:
            continue
        if len(shapes[i]) == len(shapes[j]) and (_lost(a, inputs) or _lost(b, inputs)):
            continue
        return True
    return False


def _lost(dim: Dim, inputs: frozenset[str]) -> bool:
    """A dim onnx's shape inference could not name (None, or an `unk__N` it made up)."""
    return dim is None or (isinstance(dim, str) and not is_input_dim(dim, inputs))


def over_budget(shapes: list[list[Dim] | None]) -> str | None:
    """Why a node has too many distinct operand shapes to pair them all (MAX_NODE_SHAPES); None when it has not.
    Not checking it reports nothing false: the node is named in the rejections."""
    n = len(distinct_shapes(shapes))
    if n <= MAX_NODE_SHAPES:
        return None
    return f"{n} different operand shapes, more than the {MAX_NODE_SHAPES} GF003 pairs in one node: not checked"


def placed_shape(shape: list[Dim], axes: tuple[int, ...], rank: int) -> list[Dim]:
    """`shape` laid on `axes` of a rank-`rank` shape, 1 elsewhere: what Unsqueeze on the other axes gives."""
    out: list[Dim] = [1] * rank
    for dim, axis in zip(shape, axes, strict=True):
        out[axis] = dim
    return out


def fixed_by_placing(shapes, placed, rank, inputs) -> bool:
    """After laying each lower-rank operand on its chosen axes (1s elsewhere), no pair is a mismatch any more."""
    padded = [placed_shape(s, placed[k], rank) if k in placed else s for k, s in enumerate(shapes)]
    return not any(p[-1] in BAD_PAIRS for p in operand_pairs(padded, inputs))
