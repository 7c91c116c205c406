"""What a constant of the graph meets: a sum over an axis of a size, a softmax over one, positions along one.

graphfix.analysis.echoes reads a constant as a function of a baked size by what it meets (the forms of its
docstring), and GF012 a whole number as a mean's length. A sum is looked for within SUM_HOPS ops, up the
constant's other operand and down its output, through every operand of arithmetic and Concat, past a linear map
or an elementwise nonlinearity (`mapped`: only the forms are read there); a MatMul or Gemm of two data operands is
a sum over the first one's contracted axis (a covariance), unless a softmax normalizes its product (attention's
scores) or weighs its first operand (`attn @ v`); a softmax over the size is a sum of sorts once taken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.broadcast import named, named_length
from graphfix.analysis.sizes.ops import is_table
from graphfix.analysis.walk import within

SUMS = frozenset({"ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp",
                  "GlobalAveragePool", "Einsum"})  # a mean's sum: scaling the summed data scales the sum
EXTREMES = frozenset({"ReduceMax", "ReduceMin", "GlobalMaxPool"})  # what a normalization divides by, once taken:
# scaling the data before scales the extreme alone (whisper's log10, a Div by ln 10 before its `max()`, helper 69)
GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool"})  # over every axis past the channels
PASSES = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Identity", "Flatten", "Neg", "Sqrt",
                    "Abs", "Add", "Sub", "Mul", "Div", "Gather", "Slice", "Concat"})  # a sum seen through these
# is still the value's (a pick of a pooled mean, `adaptive_avg_pool1d(h, 1)[..., 0]`, helper 69)
OPERANDS = frozenset({"Add", "Sub", "Mul", "Div", "Concat"})  # whose every operand is data: a Linear's bias comes
# first in the TorchScript export of a 3-D Linear (`Add(bias, MatMul)`), pooled statistics are concatenated (helper 75)
LINEAR = frozenset({"MatMul", "Gemm"})  # with constant weights, a linear map: it scales with the sum it maps
# (`Linear(h.sum(1)) / (T - 5)`, red team 41), but a model scales what it maps by its own numbers (a classifier's
# temperature, helper 75): past one, only the forms are read
NONLINEAR = frozenset({"Relu", "LeakyRelu", "Tanh", "Sigmoid", "Clip", "Exp", "Log", "Elu", "Gelu", "Erf", "Softplus",
                       "Max", "Min", "Pow"})
# past these, as past a linear map, only the forms are read (`relu(h.sum(1)) / (T - 1)`, helper 76)
NORMALIZED = frozenset({"Softmax", "LogSoftmax"})  # over an axis of the size, a sum of sorts once taken: its
# weights sum to one, so a number scaling them (`softmax(h, 1) * (T / 2)`, helper 115) is a count of frames
SCALED = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Identity", "Mul", "Div", "Neg"})
# what keeps a value scaled on its way to a softmax: no Add (a mask's fill reaches the scores through one)
SCORED = SCALED | {"Add", "Sub", "Where"}  # what attention's scores pass on their way to the softmax (a mask, a bias)
PRODUCTS = frozenset({"MatMul", "Einsum", "Gemm", "Conv"})  # what scores are computed by, upstream of a scale
POSITIONS = frozenset({"Range", "CumSum"})  # positions along an axis: a cumulative sum of a mask is DETR's
HOPS = 6  # ops walked up from a MatMul to the softmax that weighs it
SUM_HOPS = 8  # and to a sum (two Linears, a Reshape, a Transpose and another between them, red team 41)


class Near(NamedTuple):
    """What the value a constant meets holds: a sum (or extreme) over an axis of the size, with the static dims
    of what was summed, or positions along it (a Range or CumSum, no dims); `taken`: the sum was taken before the
    constant meets it (found up the graph), not after; `mapped`: found past a linear map; `logged`: a log of the
    sum, taken (a ReduceLogSumExp, or a Log of a sum), which a number added to it scales (`logsumexp(h, 1) -
    0.5 * log(T)` is `log(sum(exp(h)) / sqrt(T))`, helper 115); `ranged`: positions from a Range (not a
    cumulative sum); `op`: the sum, softmax or positions' op met."""

    summed: bool
    dims: list[int]
    taken: bool = False
    mapped: bool = False
    logged: bool = False
    ranged: bool = False
    op: gs.Node | None = None


def sum_near(node: gs.Node, const: gs.Tensor, n: int | None, shape, constant_value,
             past_sums: bool = False) -> Near | None:
    """A sum over an axis of size `n` (or a dim the graph left symbolic; only those for None) that the node's
    other operand comes from, or its output goes to, within SUM_HOPS ops, or positions along such an axis (a Range
    the other operand comes from), or lengths a caller gives (an integer graph input, no op); None where neither
    is near. With `past_sums`, past a sum over other axes
    (GF012's `h.sum(1).sum(-1) / T`; the echo check stops there: a model's own gain of such a sum is common)."""
    other = next((t for t in node.inputs if t is not const), None)
    frontier = [(other, "up", False, False), *((out, "down", False, False) for out in node.outputs)]
    seen: set[tuple] = set()  # each tensor once per way and state: a Concat of K copies, 8 deep, is K**8 paths
    for _ in range(SUM_HOPS):
        step = []
        for tensor, way, mapped, logged in frontier:
            if tensor is None or (key := (id(tensor), way, mapped, logged)) in seen:
                continue
            seen.add(key)
            if way == "up" and _counts_given(tensor):  # lengths the caller gives: counts along the axis
                return Near(False, [])
            for op in (tensor.inputs[:1] if way == "up" else tensor.outputs):
                if op.op in SUMS or (op.op in EXTREMES and way == "up") or _product(op):
                    dims = shape(op.inputs[0]) if op.inputs else None
                    summed = reduced(op, dims, constant_value) if dims is not None else ()
                    if any(d == n or (not isinstance(d, int) and (op.op not in LINEAR or named(d)))
                           for d in summed):
                        return Near(True, [d for d in dims if isinstance(d, int) and d > 1], way == "up", mapped,
                                    way == "up" and (logged or (op.op == "ReduceLogSumExp" and not mapped)), op=op)
                    if past_sums and op.op in SUMS - {"Einsum"}:  # of one over the size: `h.sum(1).sum(-1)`
                        step.extend((t, way, mapped, logged) for t in (op.outputs if way == "down" else op.inputs[:1]))
                elif way == "up" and (total := _last_of_cumsum(op, shape, constant_value)) is not None:
                    dims = shape(total.inputs[0])  # `h.cumsum(1)[:, -1]`: the sum over that axis (helper 125)
                    if any(d == n or not isinstance(d, int) for d in reduced(total, dims, constant_value)):
                        return Near(True, [d for d in dims if isinstance(d, int) and d > 1], True, mapped, op=total)
                elif op.op in NORMALIZED and way == "up":
                    dims = shape(op.inputs[0]) if op.inputs else None
                    axis = int(op.attrs.get("axis", -1))
                    if dims is not None and -len(dims) <= axis < len(dims) and \
                            (dims[axis] == n or not isinstance(dims[axis], int)):
                        return Near(True, [d for d in dims if isinstance(d, int) and d > 1], True, mapped,
                                    op.op == "LogSoftmax" and not mapped, op=op)  # `log_softmax(h, 1) + log(T / 2)`
                elif op.op in POSITIONS and way == "up":
                    dims = shape(op.outputs[0]) if op.outputs else None
                    if dims is None or any(d == n or not isinstance(d, int) for d in dims):
                        return Near(False, [], ranged=op.op == "Range", op=op)
                elif op.op in PASSES or op.op in NONLINEAR or _linear(op):
                    ahead = op.outputs if way == "down" else \
                        [t for t in op.inputs if not _weight(t)] if op.op in OPERANDS else op.inputs[:1]
                    mapping = op.op in NONLINEAR or _linear(op)
                    logs = op.op == "Log" and not mapped  # the first map met is a log: of the sum, if one is next
                    step.extend((t, way, mapped or mapping, logs or (logged and not mapping)) for t in ahead)
        frontier = step
    return None


def _counts_given(tensor: gs.Tensor) -> bool:
    """An integer graph input (no producer, no constant): lengths a caller gives, counts of frames along an axis
    as positions are (helper 141: `lengths.float() / (int(T) - 1)`, speechbrain's relative lengths)."""
    return isinstance(tensor, gs.Variable) and not tensor.inputs and tensor.dtype is not None \
        and np.issubdtype(np.dtype(tensor.dtype), np.integer)


def _last_of_cumsum(node: gs.Node, shape, constant_value) -> gs.Node | None:
    """The CumSum whose last position along its axis `node` gathers (`h.cumsum(1)[:, -1]`, a sum over the axis)."""
    total = node.inputs[0].inputs[0] if node.op == "Gather" and node.inputs and node.inputs[0].inputs else None
    if total is None or total.op != "CumSum" or total.attrs.get("exclusive", 0) or total.attrs.get("reverse", 0):
        return None
    index, axis = constant_value(node.inputs[1]), constant_value(total.inputs[1])
    dims = shape(total.inputs[0])
    if index is None or axis is None or dims is None or np.size(index) != 1 or np.size(axis) != 1:
        return None
    rank = len(dims)
    return total if int(np.reshape(index, -1)[0]) == -1 and \
        int(node.attrs.get("axis", 0)) % rank == int(np.reshape(axis, -1)[0]) % rank else None


def _product(node: gs.Node) -> bool:
    """A MatMul (or Gemm) of two data operands: a sum over the first one's last axis (its first with `transA`:
    `hc.transpose(1, 2) @ hc / (T - 1)`, a covariance; `z.T @ z / (N - 1)`, red team 113; `addmm(c, z.t(), z)`,
    helper 115), as an Einsum is, where that axis is the size itself, static or named (a head dim computed from
    a Shape, `unk__5`, is no length). Not attention's scores, `q @ k.T`, which a softmax normalizes: they sum
    over features (BERT traced at 64 tokens of 64-wide heads scales its queries by 64 ** -0.25, helper 65)."""
    return node.op in LINEAR and not _linear(node) and not any(_weight(t) for t in node.inputs[:2]) \
        and not _reaches(node, NORMALIZED, SCORED) and not _weighted(node)


def _weighted(node: gs.Node) -> bool:
    """Whether the MatMul's first operand comes from a softmax (through scaling, a mask or a pick of heads):
    attention's `attn @ v` averages the values, its weights summing to one, so no number of the length scales it
    (`(attn @ v) * 0.1`, a ReZero gate, helper 115)."""
    return _from(node.inputs[:1], NORMALIZED, lambda op: op.inputs[:1] if op.op != "Where" else op.inputs[1:])


def _from(tensors: list[gs.Tensor], ends: frozenset[str], ahead: Callable[[gs.Node], list]) -> bool:
    """Whether the tensors are computed by an op of `ends`, within HOPS ops of SCORED up, each passed to the
    tensors `ahead` of it."""
    return within(tensors, HOPS, lambda op, _: op.op in ends, lambda op: op.op in SCORED, ahead, up=True)


def normalized(node: gs.Node, n: int, shape, biased: bool = True, products: bool = True) -> bool:
    """Whether the node's output reaches, scaled only (reshaped, transposed, multiplied or divided), what a softmax
    over an axis of size `n` normalizes, or over one the graph names and not as a batch (attention pooling of the
    raw input over `T`, helper 117; not a contrastive softmax over the batch, `softmax(z @ z.T / 0.07)`, helper
    115): a temperature of the length (`scores * log(T) / log(512)`, attention pooling's `logits / sqrt(T - 1)`,
    red team 113). A model's own scale of such scores is a plain form of a width it meets (`1 / sqrt(d)`, read
    before; so is a head's 1/sqrt(k), echoes._a_heads_width). Scaled queries reach the scores through their
    product with the keys (a MatMul or an Einsum of two data operands: `q * (log(T) / log(512))`, helpers 115 and
    120), unless `products` is False (a head's own scale of its queries); with `biased`, a scale of scores reaches
    the softmax through a bias or a mask added after it (`logits / sqrt(T - 1) + b`, ALiBi's distances), where
    what it scales was computed by a product (a MatMul, Gemm, Einsum or Conv): a mask's fill (`(1 - mask) *
    -10000`) scales no product, and one of a mask made by a product (`bmm(m, m.T)`, helper 120) is no
    temperature's magnitude (the caller's `biased`)."""
    def over_n(op: gs.Node) -> bool:  # the length, static past the baked Reshape or named apart from a batch
        dims = shape(op.inputs[0]) if op.inputs else None
        axis = int(op.attrs.get("axis", -1))
        if dims is None or not -len(dims) <= axis < len(dims):
            return False
        return dims[axis] == n or named_length(dims[axis])
    through = (SCORED if biased and _scores(node) else SCALED) | ({"MatMul", "Einsum"} if products else set())
    return _reaches(node, NORMALIZED, through, over_n)


def _scores(node: gs.Node) -> bool:
    """Whether the node's data operand was computed by a product (PRODUCTS) within HOPS ops of what scores pass
    (a Linear's bias, a mask, a scale): scores or logits, not a mask."""
    return _from([t for t in node.inputs if not is_table(t)], PRODUCTS,
                 lambda op: [t for t in op.inputs if not is_table(t)])


def _reaches(node: gs.Node, ends: frozenset[str], through: frozenset[str],
             meets: Callable[[gs.Node], bool] = lambda op: True) -> bool:
    """Whether the node's output reaches an op of `ends` that `meets`, within SUM_HOPS ops of `through` (a MatMul
    among them of two data operands only: a Linear maps what it meets)."""
    return within(node.outputs, SUM_HOPS, lambda op, _: op.op in ends and meets(op), lambda op: op.op in through and
                  not _linear(op) and not (op.op == "Einsum" and any(map(_weight, op.inputs))))


def _linear(node: gs.Node) -> bool:
    return node.op in LINEAR and all(_weight(t) for t in node.inputs[1:])


def _weight(tensor: gs.Tensor) -> bool:
    """A weight, or one passed through Identity (the TorchScript exporter's for a Linear used twice)."""
    while not is_table(tensor) and len(tensor.inputs) == 1 and tensor.inputs[0].op == "Identity":
        tensor = tensor.inputs[0].inputs[0]
    return is_table(tensor)


def reduced(node: gs.Node, dims: list, constant_value) -> list:
    """The dims a reduction sums over (its `axes` attribute or constant input, as a Constant node gives it too;
    all of them without; a global pool's past the channels)."""
    if node.op in GLOBAL_POOLS:
        return list(dims[2:])
    if node.op == "MatMul":  # over the first operand's last axis
        return list(dims[-1:])
    if node.op == "Gemm":  # over A's columns, or its rows with transA
        return [dims[0 if node.attrs.get("transA", 0) else -1]] if dims else []
    if node.op == "Einsum":  # the first operand's letters the output drops (`btd->bd` sums over t, `...td->...d`)
        terms = str(node.attrs.get("equation", "")).replace(" ", "").split("->")
        head, dots, tail = (terms[0].split(",")[0] if len(terms) == 2 else "").partition("...")
        if len(head) + len(tail) > len(dims) or (not dots and len(head) != len(dims)):
            return []
        lettered = [*zip(head, dims, strict=False), *zip(tail, dims[len(dims) - len(tail):], strict=True)]
        return [dim for letter, dim in lettered if letter not in terms[1]]
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and is_table(node.inputs[1]):
        value = constant_value(node.inputs[1])
        axes = None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]
    return list(dims) if not axes else [dims[a] for a in axes if -len(dims) <= a < len(dims)]
