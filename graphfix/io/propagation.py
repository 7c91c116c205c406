"""What onnx's data propagation and onnxruntime's loading may hold, bounded before either runs.

onnx's shape inference with `data_prop=True` holds each value of a 1-D tensor of known length as a dim, and
onnxruntime propagates the values of shapes as it loads a graph; a node sized by constants (`Range`,
`ConstantOfShape`, `Expand`, `Tile`, `Pad`, `Resize`, `OneHot`, ...) past MAX_PROPAGATED_ELEMENTS, or a Shape of a
tensor whose rank a chain of Reshapes doubled, asks for gigabytes from a file of a few KB. `data_prop_allowed`
walks the graph once with upper bounds on each tensor's rank and on each vector's length, and turns data
propagation off for such models (their rules then see fewer shapes computed from shapes), and onnxruntime's load
too (`sized=False`). The bounds are exact where an op says its output's rank, and never below the truth: a model
declares no rank that counts (onnxruntime merges a declared rank leniently and propagates the inferred one).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import AttributeProto, numpy_helper

from graphfix.io.budgets import subgraphs

MAX_PROPAGATED_ELEMENTS = 1 << 20  # a tensor sized by constants past this is no shape computation


def data_prop_allowed(model: onnx.ModelProto, sized: bool = True) -> bool:
    """False when onnx's data propagation could allocate without bound. It holds the values of a 1-D tensor of
    known length as one dim each (about 100 bytes) wherever an Add, Mul, Concat, Gather, Slice, ... reads it, and
    a node sized by constants makes that length what a constant says: `ConstantOfShape([10**8])`, 160 bytes on
    disk, asks for 10 GB. So each node's output is sized from its constants, never computed (`sized_elements`),
    in every graph and function, as is each 1-D graph input. `sized=False` counts only the values propagated
    from shapes and 1-D tensors (`Shape`, `Concat`, ...), which is what onnxruntime propagates as it loads a
    graph (it makes no tensor that constants size before a run)."""
    if any(_declared_length(value) > MAX_PROPAGATED_ELEMENTS for value in model.graph.input):
        return False
    graph = model.graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.input, *graph.value_info, *graph.output]
             if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}
    ranks.update((t.name, len(t.dims)) for t in graph.initializer)
    widest = max(ranks.values(), default=0)
    if not _scope_allowed(graph.node, graph.initializer, {}, ranks, widest, sized):
        return False
    # a function's inputs: as wide as any tensor the graph declares or makes (a OneHot chain's 300 dims passed to
    # a function that concatenates their shape was taken for as wide as the declared inputs)
    widest = max([widest, *ranks.values()])
    return all(_scope_allowed(f.node, (), {}, {}, widest, sized) for f in model.functions)


def _scope_allowed(nodes: Iterable[onnx.NodeProto], initializers: Iterable[onnx.TensorProto],
                   outer: dict[str, onnx.TensorProto], ranks: dict[str, float], widest: float,
                   sized: bool = True) -> bool:
    """Whether no node of a graph (or function body), nor of its subgraphs, is sized past the budget; `outer`:
    the constants of the graphs around it, which a subgraph reads by name; `ranks`: the tensors' ranks known so
    far (declared, or carried through the nodes by `_rank`), `widest` the rank of a tensor whose rank is not."""
    constants = {**outer, **{t.name: t for t in initializers if t.data_location != onnx.TensorProto.EXTERNAL}}
    for node in nodes:
        value = constant_value(node)
        if value is not None:
            constants[node.output[0]] = value
    lengths = {name: _elements(t.dims) for name, t in constants.items() if len(t.dims) == 1}
    ranks.update((name, len(t.dims)) for name, t in constants.items())
    bounds = dict(constants)  # and the numbers passed on from them: a Slice's bounds, read for its length only
    for node in nodes:
        value = _passed_through(node, bounds)
        if value is not None:
            bounds[node.output[0]] = value
    for node in nodes:
        made = max(sized_elements(node, constants) if sized else 0, _propagated(node, lengths, bounds))
        if node.op_type == "Shape" and node.input:  # one value per dim (helper 55: 1,000 dims, concatenated)
            made = max(made, ranks.get(node.input[0], widest))
        if made > MAX_PROPAGATED_ELEMENTS:
            return False
        rank = _rank(node, ranks, lengths, constants, unknown=widest)
        if made and node.output:
            lengths[node.output[0]] = 1 if rank == 0 else made  # a scalar holds one value, whatever made it
        ranks.update((name, rank) for name in node.output if name)
        if not all(_scope_allowed(sub.node, sub.initializer, constants, ranks, max(widest, rank), sized)
                   for sub in subgraphs(node)):
            return False
    return True


def _rank(node: onnx.NodeProto, ranks: dict[str, float], lengths: dict[str, float],
          constants: dict[str, onnx.TensorProto] | None = None, unknown: float = 0) -> float:
    """An upper bound on the rank of the node's outputs, for `Shape` downstream: exact where the op says it (1 for
    Shape, 0 for Size, r + q - 1 for Gather, a dim per output letter of an Einsum, what a Squeeze leaves); the
    widest input's for an op that adds no dim (`RANK_KEEPING`); for one that does, what it adds (Unsqueeze's axes,
    a shape vector's length for Reshape, Expand and ConstantOfShape); for any other, one more than the widest
    input (helper 56: 999 OneHots took a rank-1 input to rank 1000), or their sum for GatherND. Looser bounds
    (Shape as wide as its input, Einsum as the sum of its inputs) doubled with every layer of a torchvision ViT or
    MaxViT, which then was not run (helper 62)."""
    inputs = [ranks.get(name, unknown) for name in node.input if name]  # a function's inputs: as wide as any
    widest = max(inputs, default=0)
    if node.op_type in ("Shape", "Size"):  # a shape vector, a count
        return 1 if node.op_type == "Shape" else 0
    if node.op_type == "Squeeze" and inputs:  # the axes it surely removes: [0, 0] is one, so may [0, -1] be
        axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
        given = _values(node, 1, constants or {}) if len(node.input) > 1 else None
        axes = given if given is not None else axes
        removed = max(len({a for a in axes if a >= 0}), len({a for a in axes if a < 0})) if axes else 0
        return max(inputs[0] - removed, 0)
    if node.op_type in RANK_KEEPING:
        return widest
    if node.op_type == "Unsqueeze":
        axes = next((len(a.ints) for a in node.attribute if a.name == "axes"), 0)
        return widest + max(axes, lengths.get(node.input[1], 1) if len(node.input) > 1 else 1)
    if node.op_type in ("Reshape", "Expand") and len(node.input) > 1:
        return max(widest, lengths.get(node.input[1], widest + 1))
    if node.op_type == "ConstantOfShape" and node.input:
        return lengths.get(node.input[0], widest + 1)
    if node.op_type == "Einsum":  # a letter per output dim, and what "..." stands for: no wider than an input
        equation = next((a.s.decode("utf-8", "replace") for a in node.attribute if a.name == "equation"), "")
        output = equation.split("->", 1)[1] if "->" in equation else "".join(set(filter(str.isalpha, equation)))
        return sum(map(str.isalpha, output)) + (widest if "." in equation else 0)
    if node.op_type == "Gather" and len(inputs) == 2:
        return max(inputs[0] + inputs[1] - 1, 0)  # the data's axis replaced by the indices' dims
    if node.op_type in ("Gather", "GatherND"):
        return sum(inputs)
    return widest + 1


# ops whose outputs have no more dims than their widest input
RANK_KEEPING = frozenset({
    "Abs", "Acos", "Add", "And", "ArgMax", "ArgMin", "Asin", "Atan", "AveragePool", "BatchNormalization", "Cast",
    "CastLike", "Ceil", "Celu", "Clip", "Concat", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace",
    "Div", "Dropout", "Elu", "Equal", "Erf", "Exp", "Flatten", "Floor", "Gelu", "Gemm", "GlobalAveragePool",
    "GlobalMaxPool", "Greater", "GreaterOrEqual", "GroupNormalization", "HardSigmoid", "HardSwish", "Identity",
    "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log",
    "LogSoftmax", "LpNormalization", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mish", "Mod", "Mul", "Neg", "Not",
    "Or", "PRelu", "Pad", "Pow", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Resize", "Round", "Selu", "Sigmoid",
    "Sign", "Sin", "Sinh", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt",
    "Squeeze", "Sub", "Sum", "Tan", "Tanh", "Tile", "TopK", "Transpose", "Trilu", "Where", "Xor",
})


KEEPS_LENGTH = frozenset({"Add", "Sub", "Mul", "Div", "Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Neg",
                          "Abs", "Max", "Min", "Slice", "Where", "Equal", "Floor", "Ceil", "Mod"})


def _propagated(node: onnx.NodeProto, lengths: dict[str, float],
                constants: dict[str, onnx.TensorProto] | None = None) -> float:
    """The length of the 1-D value onnx's data propagation may hold for the node's output, from its inputs'
    (`lengths`): a Concat's adds them up (1,000 copies of 1,000 values, twice: 10**9 from 11 KB), an elementwise op
    keeps the longest, a Gather takes its indices', a Slice with constant bounds no more than they allow."""
    known = [lengths.get(name, 0) for name in node.input if name]
    if node.op_type == "Concat":
        return sum(known)
    if node.op_type == "Gather" and len(node.input) > 1:
        return lengths.get(node.input[1], 0)
    if node.op_type == "Slice" and known and known[0]:
        return min(known[0], _slice_most(node, constants or {}, known[0]))
    return max(known, default=0) if node.op_type in KEEPS_LENGTH else 0


def _slice_most(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto], longest: float) -> float:
    """The most values a Slice with constant bounds keeps of a vector of at most `longest` values (`shape[:2]` and
    `shape[3:]` of a ViT's unflatten keep all but one between them); infinite where the bounds are not constant.
    For a start s and an end e of one sign, or e < 0 <= s, the count grows with the vector's length l, so the
    longest keeps the most; for s < 0 <= e, min(e, l) - max(s + l, 0) <= min(e, -s) at any l."""
    starts, ends = _values(node, 1, constants), _values(node, 2, constants)
    steps = _values(node, 4, constants) if len(node.input) > 4 else [1.0]
    if not (starts and ends and steps) or len(starts) != 1 or len(ends) != 1 or len(steps) != 1 or steps[0] < 1:
        return math.inf
    start, end, step = starts[0], ends[0], steps[0]
    if start < 0 <= end:
        return max(math.ceil(min(end, -start) / step), 0)
    if not math.isfinite(longest):
        return math.inf

    def clamped(index: float) -> float:
        return min(max(index + longest if index < 0 else index, 0), longest)

    return max(math.ceil((clamped(end) - clamped(start)) / step), 0)


FOLDED = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
          "Mod": lambda a, b: a % b}  # on Python ints: exact, where int64 would wrap


def _passed_through(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> onnx.TensorProto | None:
    """A few integers a Reshape, Squeeze, Unsqueeze or Identity passes on from a constant, or that Add, Sub, Mul or
    Mod compute from constants (the TorchScript exporter writes unflatten's Slice bounds as
    `Reshape(Mod(2, 3), [1])` and `Reshape(Add(Mod(2, 3), 1), [1])`), as a vector of those values: their values,
    never their shape (a Reshape of one number may have any rank)."""
    if not node.input or not node.output:
        return None
    if node.op_type in ("Reshape", "Squeeze", "Unsqueeze", "Identity"):
        numbers = _integers(node, 0, constants)
    elif node.op_type in FOLDED and len(node.input) == 2:
        a, b = _integers(node, 0, constants), _integers(node, 1, constants)
        fmod = any(attr.name == "fmod" and attr.i for attr in node.attribute)
        if a is None or b is None or (len(a) != len(b) and 1 not in (len(a), len(b))) or \
                (node.op_type == "Mod" and (fmod or 0 in b)):
            return None
        numbers = [FOLDED[node.op_type](a[i % len(a)], b[i % len(b)]) for i in range(max(len(a), len(b)))]
    else:
        return None
    if numbers is None or any(abs(n) >= 1 << 62 for n in numbers):
        return None
    return numpy_helper.from_array(np.array(numbers, np.int64), node.output[0])


def _integers(node: onnx.NodeProto, index: int, constants: dict[str, onnx.TensorProto]) -> list[int] | None:
    """A constant integer input of a few values (at most 8), as Python ints read from the tensor's own integers;
    None otherwise. Never through floats: 2**61 + 255 - 2**61 is 255, not the 0 that doubles give (helper 65)."""
    tensor = constants.get(node.input[index]) if index < len(node.input) else None
    if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL or _elements(tensor.dims) > 8 \
            or tensor.data_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
        return None
    try:
        return [int(n) for n in np.asarray(numpy_helper.to_array(tensor)).reshape(-1)]
    except (ValueError, TypeError):
        return None


def constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node holds (`value`, `value_int(s)`, `value_float(s)`), as onnx's shape inference
    reads it; None for any other node."""
    if node.op_type != "Constant" or len(node.output) != 1 or len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name == "value" and attr.type == AttributeProto.TENSOR:
        return attr.t
    made = {"value_int": (onnx.TensorProto.INT64, [attr.i]), "value_ints": (onnx.TensorProto.INT64, attr.ints),
            "value_float": (onnx.TensorProto.FLOAT, [attr.f]), "value_floats": (onnx.TensorProto.FLOAT, attr.floats)}
    if attr.name not in made:
        return None
    elem, values = made[attr.name]
    dims = [] if attr.name in ("value_int", "value_float") else [len(values)]
    return onnx.helper.make_tensor(node.output[0], elem, dims, values)


MAX_SHAPE_VALUES = 4096  # a shape, scales or pads input longer than this is read as unbounded
# op -> the input (index) whose values size its output, and whether the output also has the first input's elements
SIZED_BY = {"ConstantOfShape": (0, False), "Expand": (1, False), "Tile": (1, True), "CenterCropPad": (1, False),
            "Upsample": (1, True), "OneHot": (1, False)}


def sized_elements(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> float:
    """A lower bound on the elements (or on the length of one axis) of a node's output, computed from constant
    inputs without making them; 0 where its size is not constant. A 0 in a shape counts as 1: a reduction over
    that axis leaves the others, as long. Constants themselves count: a 1-D integer one is propagated whole."""
    if node.op_type == "Constant":
        value = constants.get(node.output[0])
        integer = value is not None and value.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
        return _elements(value.dims) if integer and len(value.dims) == 1 else 0
    if node.op_type == "Range":
        return _range_length(node, constants)
    if node.op_type == "Resize":  # sizes (input 3) or scales (input 2, input 1 before opset 11)
        return max(_sized(node, 3, False, constants), _sized(node, 2, True, constants),
                   _sized(node, 1, True, constants))
    if node.op_type == "Pad":  # pads as input 1 (opset 11) or as an attribute: one axis is at least as long
        pads = _values(node, 1, constants)
        pads = pads if pads is not None else next((list(a.ints) for a in node.attribute if a.name == "pads"), [])
        half = len(pads) // 2
        return max((pads[i] + pads[i + half] for i in range(half)), default=0)
    if node.op_type in SIZED_BY:
        return _sized(node, *SIZED_BY[node.op_type], constants)
    return 0


def _sized(node: onnx.NodeProto, index: int, times_input: bool, constants: dict[str, onnx.TensorProto]) -> float:
    values = _values(node, index, constants)
    if values is None:
        return 0
    first = constants.get(node.input[0]) if times_input and node.input else None
    return _elements(values) * (_elements(first.dims) if first is not None else 1)


def _values(node: onnx.NodeProto, index: int, constants: dict[str, onnx.TensorProto]) -> list[float] | None:
    """The values of a node's constant input, or None (no such input, not constant, stored apart, unreadable).
    One of more than MAX_SHAPE_VALUES is not read: its size is taken as unbounded (no rank is that high; ones
    around a long axis, squeezed away, would hide it)."""
    tensor = constants.get(node.input[index]) if index < len(node.input) else None
    if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None  # stored apart: onnx's numpy_helper would look in the working directory
    if _elements(tensor.dims) > MAX_SHAPE_VALUES:
        return [math.inf]
    try:
        return [float(v) for v in np.asarray(numpy_helper.to_array(tensor)).reshape(-1)]
    except (ValueError, TypeError):
        return None


def _range_length(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> float:
    bounds = [_values(node, index, constants) for index in range(3)]
    if any(b is None or len(b) != 1 for b in bounds):
        return 0
    start, limit, delta = (b[0] for b in bounds)
    return math.inf if delta == 0 else (limit - start) / delta


def _elements(dims: Iterable[float]) -> float:
    """The product of `dims`, each at least 1 (a float: 10**300 stays a number)."""
    return math.prod(max(float(d), 1.0) for d in dims)


def _declared_length(value: onnx.ValueInfoProto) -> int:
    """The length a 1-D graph input declares, else 0."""
    dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
    return dims[0].dim_value if len(dims) == 1 else 0
