"""repeat_interleave as exporters unroll it, and as GF002 rebuilds it.

Recognising: the pieces of a split input (a Split's outputs, or SequenceAt of a SplitToSequence) and whether they
cover the whole input. Rebuilding: the canonical subgraphs, Unsqueeze → Expand → Reshape for one repeat count and a
Gather of computed indices for per-element counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.builders import Builder
from graphfix.analysis.constants import Elem, Evaluator

if TYPE_CHECKING:
    from graphfix.analysis.context import RuleContext


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def chunk_source(tensor: gs.Tensor) -> tuple[gs.Tensor, int, str] | None:
    """(input, axis, kind) when `tensor` is one piece of a Split (or SequenceAt of a SplitToSequence)."""
    node = producer(tensor)
    if node is not None and node.op == "Split":
        return node.inputs[0], node.attrs.get("axis", 0), "split"
    if node is not None and node.op == "SequenceAt":
        return split_to_sequence(node.inputs[0])
    return None


def chunk_index(ctx: RuleContext, tensor: gs.Tensor) -> int | None:
    node = producer(tensor)
    if node.op == "Split":
        return node.outputs.index(tensor)
    value = ctx.constant_value(node.inputs[1])
    return int(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def split_covers(ctx: RuleContext, vec: Evaluator, piece: gs.Tensor, count: int) -> bool:
    """The split yields exactly `count` pieces of size 1 (so the branches see the whole input)."""
    node = producer(piece)
    x, axis = node.inputs[0], node.attrs.get("axis", 0)
    shape = ctx.shape(x) or []
    if node.op == "SequenceAt":
        node = producer(node.inputs[0])
    if node.op == "Split" and len(node.outputs) != count:
        return False
    sizes = node.attrs.get("split") or (vec.elems(node.inputs[1]) if len(node.inputs) > 1 else None)
    if sizes is None and node.op == "Split":
        return bool(shape) and shape[axis % len(shape)] == count
    if sizes is None or (len(sizes) == 1 and node.op == "SplitToSequence"):
        return unit_split(vec, node) and bool(shape) and shape[axis % len(shape)] == count
    return list(sizes) == [1] * count


def unit_split(vec: Evaluator, node: gs.Node) -> bool:
    """A SplitToSequence into pieces of size 1 (split = 1, a vector of ones, or ConstantOfShape(value=1))."""
    split = node.inputs[1]
    sizes = vec.elems(split)
    if sizes is not None:
        return bool(sizes) and all(s == 1 for s in sizes)
    maker = producer(split)
    fill = maker.attrs.get("value") if maker is not None and maker.op == "ConstantOfShape" else None
    return fill is not None and np.asarray(getattr(fill, "values", fill)).reshape(-1).tolist() == [1]


def split_to_sequence(seq: gs.Tensor) -> tuple[gs.Tensor, int, str] | None:
    node = producer(seq)
    if node is None or node.op != "SplitToSequence" or len(node.inputs) < 2:
        return None
    return node.inputs[0], node.attrs.get("axis", 0), "sequence"


def uniform_repeat(b: Builder, x: gs.Tensor, shape: list, dim: int, repeats: Elem, out_dtype) -> gs.Variable:
    """x.unsqueeze(dim+1).expand(..., repeats, ...).reshape(merged): repeat_interleave with one count.

    Expand broadcasts (1s keep the input's dims), so its shape needs no Shape arithmetic; the Reshape target
    uses 0 for leading dims and constants for known trailing dims, and reads the trailing dims with one Shape
    only when two or more of the dims it must spell out are dynamic.
    """
    rank = len(shape)
    unsq = b.unsqueeze(x, dim + 1, dtype=out_dtype)
    ones_before, ones_after = [1] * (dim + 1), [1] * (rank - dim - 1)
    if isinstance(repeats, int):
        expand_shape: gs.Tensor = b.const([*ones_before, repeats, *ones_after])
    else:
        parts = [b.const(ones_before), b.elem(repeats), b.const(ones_after)]
        expand_shape = b.op("Concat", parts, {"axis": 0})
    expanded = b.op("Expand", [unsq, expand_shape], dtype=out_dtype)
    trailing = shape[dim + 1:]
    merged = shape[dim] * repeats if isinstance(shape[dim], int) and isinstance(repeats, int) else None
    unknown = [j for j, d in enumerate(trailing) if not isinstance(d, int)]
    if not unknown:
        target: gs.Tensor = b.const([0] * dim + [-1] + trailing)
    elif merged is not None and len(unknown) == 1:
        target = b.const([0] * dim + [merged] + [-1 if j in unknown else d for j, d in enumerate(trailing)])
    else:
        target = b.op("Concat", [b.const([0] * dim + [-1]), b.shape(x, dim + 1)], {"axis": 0})
    return b.op("Reshape", [expanded, target], dtype=out_dtype)


def indexed_repeat(b: Builder, x: gs.Tensor, dim: int, repeats: np.ndarray | gs.Tensor,
                   out_dtype) -> gs.Variable:
    """Gather(x, indices, axis=dim), the indices being arange(n) repeated per element.

    Constant repeats give constant indices (the CumSum folded); a run-time repeats tensor gets the dynamo
    exporter's computation: cs = CumSum(r); indices[k] = count(cs <= k) for k in Range(0, cs[-1]).
    """
    if isinstance(repeats, np.ndarray):
        indices: gs.Tensor = b.const(np.repeat(np.arange(repeats.size), repeats.astype(np.int64)))
    else:
        reps = b.op("Cast", [repeats], {"to": 7})
        cums = b.op("CumSum", [reps, b.const(0)])
        total = b.op("Gather", [cums, b.const(-1)], {"axis": 0})
        positions = b.op("Range", [b.const(0), total, b.const(1)])
        le = b.op("LessOrEqual", [b.unsqueeze(cums, 0), b.unsqueeze(positions, 1)], dtype=np.bool_)
        counts = b.op("Cast", [le], {"to": 7})
        if b.opset >= 13:
            indices = b.op("ReduceSum", [counts, b.const([1])], {"keepdims": 0})
        else:
            indices = b.op("ReduceSum", [counts], {"axes": [1], "keepdims": 0})
    return b.op("Gather", [x, indices], {"axis": dim}, dtype=out_dtype)


def one_count(repeats: Any) -> int | None:
    """The count of constant per-element counts that are all the same (the fix repeats by that one count)."""
    if isinstance(repeats, np.ndarray) and repeats.size and (repeats == repeats.reshape(-1)[0]).all():
        return int(repeats.reshape(-1)[0])
    return None


def counts_cut(repeats: Any, shape: list, dim: int, export_sizes: Callable[[], Iterable[int]]) -> str:
    """Why one count for constant per-element counts, all equal, one per position of an axis that may be a length,
    is a guess ('' where it is none): `torch.full((T,), r)` gives them at the export length, and so does a table of
    counts per position cut to the length (`rep[:T]`), whose counts past it may differ (red team 99). An axis is a
    length where it is dynamic, or static at one of the graph's `export_sizes` (past a Reshape that baked the
    length, helper 100); not 4 heads at T = 37 (helper 101)."""
    along = shape[dim] if -len(shape) <= dim < len(shape) else None
    if one_count(repeats) is None or repeats.size < 2 or (isinstance(along, int) and along not in export_sizes()):
        return ""
    return (f"the {repeats.size} counts, one per position along dim {dim} ({along}), are all equal at the export "
            "length: `torch.full((T,), r)` gives them, and so does a table of per-position counts cut to the length "
            "(`rep[:T]`), whose counts past it may differ; the fix repeats every position as many times")


def replace_repeat_interleave(x: gs.Tensor, dim: int, repeats: Any, output: gs.Tensor, shape: list, opset: int):
    """The fix: compute `output` as repeat_interleave(x, repeats, dim) with the canonical subgraph (uniform repeats:
    Unsqueeze → Expand → Reshape; per-element ones: a Gather of computed indices), detaching what produced it."""

    def apply(graph: gs.Graph) -> None:
        b = Builder(graph, f"gf002_{output.name}", opset)
        one = one_count(repeats)
        counts = repeats if one is None else one
        if isinstance(counts, np.ndarray | gs.Tensor):
            y = indexed_repeat(b, x, dim, counts, output.dtype)
        else:
            y = uniform_repeat(b, x, shape, dim, counts, output.dtype)
        node = y.inputs[0]
        output.inputs.clear()  # detach the old subgraph; the engine's clean-up removes it
        node.outputs.clear()
        node.outputs.append(output)

    return apply
