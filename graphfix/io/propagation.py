"""What onnx's data propagation and onnxruntime's loading may hold, bounded before either runs.

onnx's shape inference with `data_prop=True` holds each value of a 1-D tensor of known length as a dim, and
onnxruntime propagates the values of shapes as it loads a graph; a node sized by constants (`Range`,
`ConstantOfShape`, `Expand`, `Tile`, `Pad`, `Resize`, `OneHot`, ...) past MAX_PROPAGATED_ELEMENTS, or a Shape of a
tensor whose rank a chain of Reshapes doubled, asks for gigabytes from a file of a few KB. `data_prop_allowed`
walks the graph once with upper bounds on each tensor's rank and on each vector's length, and turns data
propagation off for such models (their rules then see fewer shapes computed from shapes), and onnxruntime's load
too (`sized=False`). The bounds are exact where an op says its output's rank, and never below the truth: a model
declares no rank that counts (onnxruntime merges a declared rank leniently and propagates the inferred one).
A model-local function is walked at each call with what its caller passes, as both inline it (`Walk.call`).
"""

from __future__ import annotations

import math
from collections import ChainMap
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field

import onnx

from graphfix.io.budgets import FunctionKey, max_nodes, subgraphs
from graphfix.io.sized import constant_value, elements, input_values, passed_through, sized_elements

MAX_PROPAGATED_ELEMENTS = 1 << 20  # a tensor sized by constants past this is no shape computation
MAX_CALL_DEPTH = 64  # calls within calls past this are not walked: the model is taken for unbounded


Returned = tuple[float, float, onnx.TensorProto | None]  # a function output's rank, length and constant value


class Unbounded(Exception):
    """A node holds more than the budget, or a call cannot be bounded (a cycle, too deep, too many nodes)."""


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
    walk = Walk(model.functions, sized)
    try:
        walk.scope(graph.node, graph.initializer, Scope(ranks=ranks), widest)
        # a function no call reaches: its inputs as wide as any tensor the graph declares or makes (a OneHot
        # chain's 300 dims passed to a function that concatenates their shape was taken for as wide as the
        # declared inputs)
        widest = max([widest, *ranks.values()])
        for key, function in walk.functions.items():
            if key not in walk.reached:
                walk.scope(function.node, (), Scope(), widest)
    except Unbounded:
        return False
    return True


@dataclass
class Scope:
    """What a graph, a subgraph or one call of a function knows, each an upper bound: its `constants` (those of
    the graphs around it or its caller's, read by name), the numbers passed on from them (`bounds`: a Slice's
    bounds, read for its length only), the `lengths` of 1-D values and the `ranks` of tensors."""

    constants: MutableMapping[str, onnx.TensorProto] = field(default_factory=dict)
    bounds: MutableMapping[str, onnx.TensorProto] = field(default_factory=dict)
    lengths: MutableMapping[str, float] = field(default_factory=dict)
    ranks: dict[str, float] = field(default_factory=dict)


class Walk:
    """One walk of a model: its local functions, walked at each call with what the caller passes in, as
    onnxruntime inlines them and onnx's inference walks a body per call. A function's inputs are then as wide and
    as long as what its caller gives (one that widened a vector handed it to another function, which took it
    for as wide as the main graph made anything: 2.4 million values went through), and its outputs as its body
    makes them (the caller knew no length of them: a function could return a vector of a million values to
    Expand). At most MAX_CALL_DEPTH calls deep and `max_nodes()` nodes walked in calls (what inlining them makes,
    which `graphfix.io.budgets` bounds too); a call into a function being walked (a cycle, which onnx's checker
    refuses) is `Unbounded`: the walk never loops."""

    def __init__(self, functions: Iterable[onnx.FunctionProto], sized: bool):
        self.functions: dict[FunctionKey, onnx.FunctionProto] = {(f.domain, f.name, f.overload): f
                                                                 for f in functions}
        self.sized = sized
        self.reached: set[FunctionKey] = set()  # called from the graph, or from a function it calls
        self._calling: list[FunctionKey] = []
        self._walked, self._most = 0, max_nodes()

    def scope(self, nodes: Iterable[onnx.NodeProto], initializers: Iterable[onnx.TensorProto], outer: Scope,
              widest: float) -> Scope:
        """What a graph (or function body) holds at its end; `Unbounded` where a node of it, of its subgraphs or
        of a function it calls is sized past the budget. `outer`: what the graphs around it or its caller pass
        in (its `ranks` are shared: a subgraph's names are the graph's), `widest` the rank of a tensor whose rank
        is not known."""
        nodes = list(nodes)
        if self._calling:
            self._walked += len(nodes)
            if self._walked > self._most:
                raise Unbounded
        own = {t.name: t for t in initializers if t.data_location != onnx.TensorProto.EXTERNAL}
        for node in nodes:
            value = constant_value(node)
            if value is not None:
                own[node.output[0]] = value
        # layered over the outer scope's, not copied: 4,000 Ifs beside 4,000 constants copied 16 million entries
        # (helper 69); what the outer scope holds it already counted
        here = Scope(_over(own, outer.constants), _over(dict(own), outer.bounds), _over({}, outer.lengths),
                     outer.ranks)
        here.lengths.update((name, elements(t.dims)) for name, t in own.items() if len(t.dims) == 1)
        here.ranks.update((name, len(t.dims)) for name, t in own.items())
        for node in nodes:
            value = passed_through(node, here.bounds)
            if value is not None:
                here.bounds[node.output[0]] = value
        for node in nodes:
            self._node(node, here, widest)
        return here

    def _node(self, node: onnx.NodeProto, here: Scope, widest: float) -> None:
        """Bound what one node holds and makes, its subgraphs and the function it calls."""
        lengths, ranks = here.lengths, here.ranks
        made = max(sized_elements(node, here.constants) if self.sized else 0, _propagated(node, lengths, here.bounds))
        if node.op_type == "Shape" and node.input:  # one value per dim (helper 55: 1,000 dims, concatenated)
            made = max(made, ranks.get(node.input[0], widest))
        if made > MAX_PROPAGATED_ELEMENTS:
            raise Unbounded
        rank = _rank(node, ranks, lengths, here.constants, unknown=widest)
        if made and node.output:
            lengths[node.output[0]] = 1 if rank == 0 else made  # a scalar holds one value, whatever made it
        ranks.update((name, rank) for name in node.output if name)
        for name, (returned_rank, length, constant) in zip(node.output, self.call(node, here, widest), strict=False):
            if not name:
                continue
            ranks[name] = returned_rank
            if length:
                lengths[name] = length
            if constant is not None:
                here.constants[name] = constant
        for sub in subgraphs(node):
            self.scope(sub.node, sub.initializer, here, max(widest, rank))

    def call(self, node: onnx.NodeProto, caller: Scope, widest: float) -> list[Returned]:
        """For a call of a local function: each output's rank, length and constant value, from its body walked
        with the caller's inputs (and the caller's attributes where the body refers to them); [] for any other
        node."""
        key = (node.domain, node.op_type, node.overload)
        function = self.functions.get(key)
        if function is None:
            return []
        self.reached.add(key)
        if key in self._calling or len(self._calling) >= MAX_CALL_DEPTH:
            raise Unbounded
        given = Scope()
        for formal, actual in zip(function.input, node.input, strict=False):
            if not actual:  # an optional input left out: nothing there
                continue
            given.ranks[formal] = caller.ranks.get(actual, widest)
            given.lengths[formal] = caller.lengths.get(actual, 0)
            for held, known in ((given.constants, caller.constants), (given.bounds, caller.bounds)):
                if actual in known:
                    held[formal] = known[actual]
        self._calling.append(key)
        try:
            end = self.scope(_bound_attributes(function, node), (), given, widest)
        finally:
            self._calling.pop()
        return [(end.ranks.get(name, widest), end.lengths.get(name, 0), end.constants.get(name))
                for name in function.output]


def _over(top: dict, outer: MutableMapping) -> MutableMapping:
    """`top` layered over `outer`: what is written goes to `top`, what is read is looked up in `top` first. Where
    `outer` holds nothing (the main graph's scope) that is `top` itself, whose reads and writes run in C, not
    through ChainMap's Python methods (a third of the walk of a Llama's graph)."""
    return ChainMap(top, outer) if outer else top


def _bound_attributes(function: onnx.FunctionProto, call: onnx.NodeProto) -> Iterator[onnx.NodeProto]:
    """The function's nodes as this call makes them: an attribute that refers to one of the function's
    (`Constant<value_ints: ints = @shape>`) takes the call's value, else the function's default, else is left
    out. A `ConstantOfShape` of such a constant is sized by what the caller gives, as onnx infers it."""
    given = {a.name: a for a in function.attribute_proto}
    given.update((a.name, a) for a in call.attribute)
    for node in function.node:
        if not any(a.ref_attr_name for a in node.attribute):
            yield node
            continue
        bound = onnx.NodeProto()
        bound.CopyFrom(node)
        del bound.attribute[:]
        for attr in node.attribute:
            value = given.get(attr.ref_attr_name) if attr.ref_attr_name else attr
            if value is not None:
                bound.attribute.add().CopyFrom(value)
                bound.attribute[-1].name = attr.name
        yield bound


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
        given = input_values(node, 1, constants or {}) if len(node.input) > 1 else None
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
    starts, ends = input_values(node, 1, constants), input_values(node, 2, constants)
    steps = input_values(node, 4, constants) if len(node.input) > 4 else [1.0]
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


def _declared_length(value: onnx.ValueInfoProto) -> int:
    """The length a 1-D graph input declares, else 0."""
    dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
    return dims[0].dim_value if len(dims) == 1 else 0
