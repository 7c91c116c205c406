"""Which axes of a tensor may hold a length: where an echo of a baked size is read (graphfix.analysis.int_echoes).

An axis holds a length where it is dynamic, of unknown size, or static at a size no weight of the graph has as a
dim (past a baked Reshape, and in a static export, a length shows as a number); at a size that is also a weight's
dim, where it is neither the last axis (a Linear's output) nor a Conv's channels.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from graphfix.analysis.sizes.ops import is_table
from graphfix.analysis.walk import within


def a_length(dims: list | None, axis: int, lengths: list[int]) -> bool:
    """Whether `axis` of `dims` is one a size can be baked along: dynamic, of unknown size, or of one of
    `lengths`."""
    if dims is None:
        return True
    if not -len(dims) <= axis < len(dims):
        return False
    dim = dims[axis]
    return not isinstance(dim, int) or dim in lengths


def cuts_a_length(node: gs.Node, constant_value, dims: list | None, lengths: list[int],
                   either: frozenset[int] = frozenset()) -> bool:
    """Whether the node picks or cuts along an axis that is dynamic, of unknown size, or of one of `lengths`
    (downstream of a baked Reshape, and in a static export, a length shows as a number): an axis a size can be
    baked along, not a model's fixed features (`x[..., :3]`); or of one of `either` (a size that is also a
    weight's dim) where it is no axis of features (`features_axis`)."""
    if dims is None:
        return True
    if node.op == "Trilu":  # a band of a square matrix is one of a length by a length (scores), whatever its size
        return len(dims) >= 2 and (dims[-1] == dims[-2] or any(not isinstance(d, int) or d in lengths
                                                               for d in dims[-2:]))
    if node.op == "Slice":
        axes = constant_value(node.inputs[3]) if len(node.inputs) > 3 and is_table(node.inputs[3]) else None
        axes = [int(a) for a in axes.reshape(-1)] if axes is not None else list(range(len(dims)))
    else:
        axes = [int(node.attrs.get("axis", 0 if node.op == "Gather" else -1))]
    picked = [(a % len(dims), dims[a]) for a in axes if -len(dims) <= a < len(dims)]
    return not picked or any(not isinstance(d, int) or d in lengths
                             or (d in either and not features_axis(node.inputs[0], a, len(dims))) for a, d in picked)


CHANNELS = frozenset({"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization"})  # axis 1: channels
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "Gelu", "Erf", "Cast", "Identity",
                         "Neg", "Clip", "LeakyRelu", "Softplus", "Dropout"})
FEATURE_HOPS = 4  # elementwise ops walked up from a channel split to the Conv


def features_axis(tensor: gs.Tensor, axis: int, rank: int) -> bool:
    """Whether the axis holds features: the last one (a Linear's output, a GLU's `z[..., :32]`), or a Conv's
    channels (axis 1 of what a Conv computes, through elementwise ops: a Conformer's `F.glu(conv(x), dim=1)`)."""
    if axis == rank - 1:
        return True
    return axis == 1 and within([tensor], FEATURE_HOPS, lambda op, _: op.op in CHANNELS,
                                lambda op: op.op in ELEMENTWISE, up=True)


def lengths(wanted: list[int], widths: frozenset[int]) -> list[int]:
    """The sizes of `wanted` that a static axis of that size is taken for: those no weight of the graph has as a
    dim (`widths`, sizes.ops.weight_dims). A weight's dim is a feature width (a GLU's `z[..., :32]` of 64
    features, exported at T = 64, cuts features, not the length); a length is no weight's dim."""
    return [n for n in wanted if n not in widths]
