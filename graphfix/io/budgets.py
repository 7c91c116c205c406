"""Resource budgets checked before any analysis: a few-KB file must not cost hours or terabytes.

- Nodes: the model's node count once its model-local functions are expanded (as onnxruntime and shape
  inference expand them) and subgraphs counted, at most GRAPHFIX_MAX_NODES (default 200,000; real exports of
  large transformers stay well below). A graph whose own nodes are over it is not analysed (its load checks
  alone would run for minutes): the command says so and exits 1. A graph within it whose functions expand past
  it (a few KB that double twenty times) is loaded and checked; `diagnose` and `check` then run the static rules
  on the graph with its function calls unexpanded and skip the probe, saying so (exit 1); the commands that must
  run the model to prove what they write (repair, extract, freeze) refuse it (exit 1). onnx's shape inference
  inlines every call, so it gets such a graph without its functions (`expands_past_budget`, counted in time
  linear in the file, never by expanding).
- Runs: one onnxruntime run stops after GRAPHFIX_MAX_RUN_SECONDS (default 10) and reports it did.
- Data propagation: onnx's shape inference with `data_prop=True` holds each value of a 1-D tensor of known length
  as a dim, so a node sized by constants (`Range`, `ConstantOfShape`, `Expand`, `Tile`, `Pad`, `Resize`,
  `OneHot`, ...) past MAX_PROPAGATED_ELEMENTS asks for gigabytes from a 160-byte file; `data_prop_allowed` turns
  it off for such models (their rules then see fewer shapes computed from shapes).
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Iterable, Iterator

import numpy as np
import onnx
from onnx import AttributeProto, numpy_helper

from graphfix.core import values
from graphfix.core.errors import GraphfixError

ENV_MAX_NODES = "GRAPHFIX_MAX_NODES"
DEFAULT_MAX_NODES = 200_000
MAX_PROPAGATED_ELEMENTS = 1 << 20  # a tensor sized by constants past this is no shape computation


class BudgetExceeded(GraphfixError):
    """The model is over a resource budget and was not analysed (exit 1: nothing was proven)."""

    exit_code = 1


ENV_PROBE_MEMORY = "GRAPHFIX_MAX_PROBE_MEMORY"
PROBE_MEMORY_SHARE = 4  # a quarter of what is available


def probe_memory_budget(available: int | None = None) -> int:
    """Bytes the probe's inputs may take: GRAPHFIX_MAX_PROBE_MEMORY, or a quarter of the memory `available`
    (`available_memory()` when not given) (here rather than in graphfix.validate, so that the command line checks it
    without importing the proof)."""
    given = values.from_env(ENV_PROBE_MEMORY, values.byte_size, None)
    if given is not None:
        return given
    return max((available or available_memory()) // PROBE_MEMORY_SHARE, 64 << 20)


ENV_MAX_MEMORY = "GRAPHFIX_MAX_MEMORY"
MEMORY_SHARE = 0.75  # of the memory available when a worker starts: what its own allocations may add


def bound_data(extra: int) -> None:
    """Hold this process's data (heap and anonymous mappings, RLIMIT_DATA; a file mapped read-only is not data) to
    what it holds now plus `extra` bytes: past it an allocation fails (numpy's MemoryError, onnxruntime's "failed
    to allocate"), where the machine would otherwise kill a process of its choosing. Without /proc, or under a
    lower hard limit, the system's own bound holds."""
    try:
        with open("/proc/self/status") as status:
            held = next(int(line.split()[1]) << 10 for line in status if line.startswith("VmData:"))
        hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
        limit = held + extra if hard == resource.RLIM_INFINITY else min(held + extra, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (OSError, ValueError, StopIteration):
        return


def bound_worker_memory() -> None:
    """A forked worker's bound (`bound_data`): GRAPHFIX_MAX_MEMORY bytes, or three quarters of the memory available
    as it starts. The probe's budget sizes its runs from inferred shapes; a tensor whose size inference does not
    see (a ConstantOfShape of computed constants, beside a node that turns data propagation off) is held here."""
    given = values.from_env(ENV_MAX_MEMORY, values.byte_size, None)
    bound_data(given if given is not None else int(available_memory() * MEMORY_SHARE))


def available_memory() -> int:
    """Bytes of memory available now (it moves with every other process): the kernel's estimate, which counts the
    page cache it would drop (a model just read fills it), else the free pages."""
    try:
        with open("/proc/meminfo") as info:
            return next(int(line.split()[1]) << 10 for line in info if line.startswith("MemAvailable:"))
    except (OSError, ValueError, StopIteration):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30


ENV_RUN_BUDGET = "GRAPHFIX_MAX_RUN_SECONDS"
DEFAULT_RUN_SECONDS = 10.0  # one onnxruntime run of the probe or the validation; a Loop of 10¹² trips stops here


def run_budget_seconds() -> float:
    """GRAPHFIX_MAX_RUN_SECONDS, or the default; a value that is no time is a UsageError."""
    return values.from_env(ENV_RUN_BUDGET, values.seconds, DEFAULT_RUN_SECONDS)


def max_nodes() -> int:
    """GRAPHFIX_MAX_NODES, or the default; a value that is no count is a UsageError."""
    return values.from_env(ENV_MAX_NODES, values.count, DEFAULT_MAX_NODES)


def check_node_budget(proto: onnx.ModelProto, name: str) -> str:
    """Raise BudgetExceeded when the graph's own nodes are over the node budget; return a note (else '') when
    only the expansion of its functions is: such a model can be analysed without expanding them."""
    limit = max_nodes()
    if expanded_node_count(proto, limit, expand=False) > limit:
        raise BudgetExceeded(f"{name}: more than {limit:,} nodes, over the node budget ({ENV_MAX_NODES}): not "
                             "analysed")
    if not expands_past_budget(proto):
        return ""
    return (f"more than {limit:,} nodes once its model-local functions are expanded, over the node budget "
            f"({ENV_MAX_NODES})")


def expands_past_budget(proto: onnx.ModelProto) -> bool:
    """Whether inlining the model's functions, as onnx's shape inference does, would make more nodes than the
    budget: a few KB of functions that each call the next twice make 2**30 (counted here, never expanded)."""
    return bool(proto.functions) and expanded_node_count(proto, max_nodes()) > max_nodes()


FunctionKey = tuple[str, str, str]  # domain, name, overload: what a call names


def expanded_node_count(proto: onnx.ModelProto, limit: int, expand: bool = True) -> int:
    """Nodes after inlining model-local functions (`expand`), else with each call counted as one node;
    counting stops a little past `limit`."""
    functions = {(f.domain, f.name, f.overload): f for f in proto.functions} if expand else {}
    return _count(proto.graph.node, _function_sizes(functions, limit), limit)


def _count(nodes: Iterable[onnx.NodeProto], sizes: dict[FunctionKey, int], limit: int) -> int:
    """Nodes, a call counted as its function's size in `sizes` (else as one), subgraphs' nodes added."""
    total = 0
    for node in nodes:
        total += sizes.get((node.domain, node.op_type, node.overload), 1)
        for sub in _subgraphs(node):
            total += _count(sub.node, sizes, limit)
        if total > limit:
            return total
    return total


def _function_sizes(functions: dict[FunctionKey, onnx.FunctionProto], limit: int) -> dict[FunctionKey, int]:
    """Each function's node count once inlined, callees first, each once: linear in the model however often they
    call each other. Depth first without recursion (a chain of 10,000 functions is a few hundred KB); a call back
    into a function still being counted (a cycle, which onnx's checker refuses) counts as one node."""
    sizes: dict[FunctionKey, int] = {}
    for root in functions:
        if root in sizes:
            continue
        path, stack = {root}, [(root, _calls(functions[root].node))]
        while stack:
            key, callees = stack[-1]
            callee = next((c for c in callees if c in functions and c not in sizes and c not in path), None)
            if callee is not None:
                path.add(callee)
                stack.append((callee, _calls(functions[callee].node)))
                continue
            if key not in sizes:
                sizes[key] = _count(functions[key].node, sizes, limit)
            path.discard(key)
            stack.pop()
    return sizes


def _calls(nodes: Iterable[onnx.NodeProto]) -> Iterator[FunctionKey]:
    """What each node names as its operator, subgraphs' nodes included."""
    for node in nodes:
        yield node.domain, node.op_type, node.overload
        for sub in _subgraphs(node):
            yield from _calls(sub.node)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        yield from [attr.g] if attr.type == AttributeProto.GRAPH else attr.graphs


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
    widest = max(ranks.values(), default=0)  # a function's inputs: as wide as any tensor the model declares
    scopes = [(graph.node, graph.initializer, ranks)] + [(f.node, (), {}) for f in model.functions]
    return all(_scope_allowed(nodes, initializers, {}, dict(known), widest, sized)
               for nodes, initializers, known in scopes)


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
                   for sub in _subgraphs(node)):
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
