"""Echoes of a baked size: float constants of the graph that equal a simple function of it.

`T = int(x.shape[1])` used twice, in a head split (`reshape(B, T, H, D)`, whose element count pins the entry:
GF004 rebuilds it) and in a mean (`h.sum(1) / T`, a Div by the float 12.0 that runs at every length). Rebuilding
the Reshape lets the model run at other lengths, where the Div still divides by the export length; the original
failed there, so no reference shows it, and the repair was written with exit 0 (helper 54). The graph cannot
say whether such a constant is the same Python int or the model's own number, so a fix that makes a size follow
the input is doubted where one is read; exported at a length no constant of the model echoes (13 rather than
16), the doubt goes away.

Two sets of forms, so that a model's own numbers are not taken for sizes where nothing points at a size:
- anywhere: n, 1/n, sqrt(n), 1/sqrt(n) (a mean, a `T ** -0.5` scale);
- where the value it meets was summed over an axis of that size, or is then (`h.sum(1) / (T - 1)`,
  `h.sum((1, 2)) / (T * D)`), or holds positions along it (`arange(T) / (T - 1)`, CoordConv's
  `arange(T) * (2 / (T - 1)) - 1`, helper 62): also n + k for k from -3 to 3, 2n, n times a dim of a summed
  value, log(n + k), and their inverses, 2 / (n + k), and n ** 0.25 and its inverse (only there: the TorchScript
  exporter scales SDPA's queries and keys by head_dim ** -0.25, and BERT traced at as many tokens as its head
  has features was refused, helper 65). An attention scale `1 / sqrt(64)` is 1/(n - 1) at n = 9
  (helper 56), but it meets the queries, which nothing summed over the length.
Beyond these forms, any other number that scales (Mul, Div) a sum or mean over an axis of the size, or the data
so summed, or a maximum or minimum once taken (`h.sum(1) * T / (T + 1)`, `h.amax(1) / (T - 1)`,
`h.sum(1) / log2(T)`, helper 65): a model scales such a sum by its own number rarely, and no list of forms holds
every function of the size. The sum is looked for within 8 ops, through a linear map (a MatMul or Gemm with
constant weights, and its bias: `Linear(h.sum(1)) / (T - 5)`), and a cumulative sum counts (red team 41). Not a
scale of the data before a maximum: it scales the maximum alone (whisper's log-mel divides by ln 10 for its log10,
torchaudio's AmplitudeToDB multiplies by 10, and both then take a maximum over the length, helper 69; no number is
exempt for what it is: 20 / T is 0.1 at 200, helper 70). Positions are scaled by models' own numbers (a rotary
table's linear scaling), so only the forms are read there.
Only sizes above 2, and no form or scale of a sum that gives 0, 0.5, 1, 2 or -1 (every GELU's and every mean of
two's own numbers); not a constant that is a plain form of a static width it meets (`_widths_near`: 0.25
dividing scores of 16-wide heads is their 1/sqrt(16), though it is 256 ** -0.25 for a length of 256).
Constants of one element are read, in the graph, its subgraphs and its local functions, and a vector of one
number repeated where it scales a sum once taken (`h.sum(1) * torch.full((D,), 1 / (T - 5))`, red team 41), not
data before a sum: a LayerScale at its initial value, `1e-6 * ones(D)`, is one (helper 70); a float16 constant is
compared at float16's precision. An Einsum sums over the letters of its first operand that its output drops.

The same int baked as an integer (helpers 57 and 61): where it picks or cuts along an axis of that size
(`x[:, T // 2]` a Gather index 3 at T = 7; `torch.roll(x, T // 2, 1)` Slice bounds -3; `x.topk(T // 2, 1)`),
where it meets an integer value that is no size (`lengths.clamp(max=T)`, `n + T`, `lengths < T`,
`where(lengths == 0, T, lengths)`, `(T - 1) - arange(T)`, `torch.full((B,), T - 1)`), or as a Pool's kernel or
stride or a Tile's repeats (`avg_pool1d(x, T)`, `.repeat(1, T, 1)`). Forms: n + k for k from -5 to 5, n // k
and ceil(n / k) for k from 2 to 4, 3n // 4, 2n // 3, 2n and their negatives for an index or a cut (`x[:, T // 4]`,
`x[:, :T - 4]`, red teams 40 and 41; a fifth or less of the size is not read: at 40 it is 8 or less, a model's own
offset as often), but for a step only n, n +- 1, a half and 2n (a third or a quarter is a strided front end's own
step: `x[:, 1::3]` reduces 40 frames to the 13 a Reshape bakes, so `x[:, :: T // 3]` at 12 is missed), n and
n +- 1 for a value, n for a kernel or repeats; no value of magnitude 2 or less (`x[:, 1:]`, `x[:, -1]`,
`x[:, ::2]`). An axis is a length where it is dynamic or where its static size (past a baked Reshape, or in a
static export) is no weight's dim (a GLU's `z[..., :32]` of 64 features at T = 64 cuts features). A constant that
meets a size is the model's own number beside it (`(T + 7) // 8`): a size is a value computed from a Shape through a
size's own arithmetic (SIZE_OPS), not data a Shape merely shaped, nor positions from a Range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.sizes.ops import is_table

ARITHMETIC = frozenset({"Add", "Sub", "Mul", "Div", "Pow"})
SUMS = frozenset({"ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp",
                  "GlobalAveragePool", "Einsum", "CumSum"})  # a mean's sum: scaling the summed data scales the sum
EXTREMES = frozenset({"ReduceMax", "ReduceMin", "GlobalMaxPool"})  # what a normalization divides by, once taken:
# scaling the data before scales the extreme alone (whisper's log10, a Div by ln 10 before its `max()`, helper 69)
GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool"})  # over every axis past the channels
SCALES = frozenset({"Mul", "Div"})
PASSES = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Identity", "Flatten", "Neg", "Sqrt",
                    "Abs", "Add", "Sub", "Mul", "Div", "Gather", "Slice"})  # a sum seen through these is still the
# value's (a pick of a pooled mean, `adaptive_avg_pool1d(h, 1)[..., 0]`, helper 69)
LINEAR = frozenset({"MatMul", "Gemm"})  # with constant weights, a linear map: it scales with the sum it maps
# (`Linear(h.sum(1)) / (T - 5)`, red team 41)
COMMON = (0.0, 0.5, 1.0, 2.0, -1.0)  # what a function of a small size gives, and what models hold for their own reasons
PLAIN = (("{}", lambda n: n), ("1/{}", lambda n: 1 / n), ("sqrt({})", math.sqrt), ("1/sqrt({})", lambda n: n ** -0.5))
ROOTS = (("{} ** 0.25", lambda n: n ** 0.25), ("{} ** -0.25", lambda n: n ** -0.25))  # SDPA's scale of q and k
SHIFTS = (-3, -2, -1, 1, 2, 3)  # n + k: `T - 1` for an unbiased mean or the last position, `T + 3` for a margin


def _plus(k: int) -> str:
    return "{}" if k == 0 else f"{{}} {'+' if k > 0 else '-'} {abs(k)}"


def _over(top: float, of: Callable[[int], float]) -> Callable[[int], float]:
    """`top / of(n)`, infinite (matching no constant) where `of(n)` is 0."""
    return lambda n: top / of(n) if of(n) else math.inf


def _log(k: int) -> Callable[[int], float]:
    return lambda n: math.log(n + k) if n + k > 0 else math.inf


SUMMED = (*(form for k in SHIFTS for form in ((_plus(k), lambda n, k=k: n + k),
                                               (f"1/({_plus(k)})", _over(1, lambda n, k=k: n + k)),
                                               (f"2/({_plus(k)})", _over(2, lambda n, k=k: n + k)))),
          ("2*{}", lambda n: 2 * n), ("1/(2*{})", lambda n: 1 / (2 * n)),
          *(form for k in (0, *SHIFTS) for form in ((f"log({_plus(k)})", _log(k)),
                                                     (f"1/log({_plus(k)})", _over(1, _log(k))))), *ROOTS)
REL_TOL = {np.dtype(np.float16): 2e-3, np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
HOPS = 6  # ops walked from the constant's node to the widths it meets
SUM_HOPS = 8  # and to a sum (two Linears, a Reshape, a Transpose and another between them, red team 41)
INT_VALUES = (("{}", lambda n: n), ("{} - 1", lambda n: n - 1), ("{} + 1", lambda n: n + 1))
INT_HALVES = (("{} // 2", lambda n: n // 2), ("ceil({} / 2)", lambda n: (n + 1) // 2), ("2*{}", lambda n: 2 * n))
CUT_SHIFTS = (*SHIFTS, -5, -4, 4, 5)  # a cut near the size's end (`x[:, :T - 4]`, red team 41)
INT_PARTS = (*((f"{{}} // {k}", lambda n, k=k: n // k) for k in (3, 4)),
             *((f"ceil({{}} / {k})", lambda n, k=k: -(-n // k)) for k in (3, 4)),
             ("3*{} // 4", lambda n: 3 * n // 4), ("2*{} // 3", lambda n: 2 * n // 3),
             *((_plus(k), lambda n, k=k: n + k) for k in CUT_SHIFTS if abs(k) > 1))


def _signed(forms: tuple) -> tuple:
    """The forms and their negatives (an index or a cut from the end)."""
    return (*forms, *((f"-({text})", lambda n, of=of: -of(n)) for text, of in forms))


INT_CUTS = _signed((*INT_VALUES, *INT_HALVES, *INT_PARTS))
# a step: a third or a quarter is every strided front end's own (`x[:, 1::3]` reduces 40 frames to the 13 a
# Reshape bakes, and 3 is 13 // 4), so a step reads the size, its neighbours, its half and its double only
STEP_CUTS = _signed((*INT_VALUES, *INT_HALVES))
INT_KERNELS = INT_CUTS[:1]
CUT_INPUTS = {"Gather": (1,), "Slice": (1, 2, 4), "TopK": (1,)}  # the inputs that index or cut data
VALUE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Clip", "Min", "Max", "Less", "LessOrEqual", "Greater",
                       "GreaterOrEqual", "Equal", "Range", "Where"})
# the ops of a size's own arithmetic (`(T + 7) // 8`, a shape vector): a constant meeting their value meets a size
SIZE_OPS = frozenset({"Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape", "Add",
                      "Sub", "Mul", "Div", "Mod", "Neg", "Floor", "Ceil", "Min", "Max"})
POOLS = frozenset({"AveragePool", "MaxPool", "LpPool"})
SHAPE_HOPS = 8  # ops walked up from a value to a Shape that sizes it


def echoes(graph: gs.Graph, sizes: Iterable[int], constant_value: Callable[[gs.Tensor], np.ndarray | None],
           shape: Callable[[gs.Tensor], list | None], fixed: Callable[[gs.Node], bool] = lambda node: False
           ) -> list[str]:
    """For each one-element constant that equals a form of one of `sizes` (the sizes a fix makes follow the
    input) where the graph reads it as a size, a line naming it. `constant_value` and `shape` are the rule
    context's. On the nodes `fixed` names, an integer equal to one of `sizes` is the constant the fix rebuilds
    (a slice end), not an echo; their other integers are (`x[:, T // 2 : T]` keeps its start at 3)."""
    wanted = sorted({n for n in sizes if isinstance(n, int) and n > 2})
    if not wanted:
        return []
    nodes = list(_nodes(graph))
    return [*_float_echoes(nodes, wanted, constant_value, shape),
            *_int_echoes(nodes, wanted, constant_value, shape, fixed, _lengths(graph, wanted))]


def _float_echoes(nodes: list[gs.Node], wanted: list[int], constant_value, shape) -> list[str]:
    """Float constants that arithmetic reads (the forms of the module's docstring)."""
    found, seen = [], set()
    for node in nodes:
        if node.op not in ARITHMETIC:
            continue
        for tensor in node.inputs:
            if id(tensor) in seen or not is_table(tensor):
                continue
            seen.add(id(tensor))
            value = constant_value(tensor)
            if value is None or value.size == 0 or value.dtype not in REL_TOL:
                continue
            item, tolerance = float(value.reshape(-1)[0]), REL_TOL[value.dtype]
            if value.size > 1:
                found.extend(_uniform_scale(node, tensor, value, wanted, shape, constant_value))
                continue
            if any(math.isclose(item, of(d), rel_tol=tolerance) for d in _widths_near(node, tensor, shape) - {*wanted}
                   for _, of in PLAIN):
                continue  # the scale of a width it meets: attention's 1/sqrt(16), SDPA's 32 ** -0.25 on q and k
            for n in wanted:
                near = _near(node, tensor, n, shape, constant_value)
                forms = [*PLAIN, *SUMMED, *_times_dims(near.dims)] if near is not None else PLAIN
                form = next((text.format(n) for text, of in forms if not any(math.isclose(of(n), c) for c in COMMON)
                             and math.isclose(item, of(n), rel_tol=tolerance)), None)
                if form is not None:
                    found.append(f"{node.op} '{node.name}' reads {item:.6g}, which is {form} for the size {n}")
                    break
                if near is not None and near.summed and node.op in SCALES \
                        and not any(math.isclose(item, c, rel_tol=tolerance) for c in COMMON):
                    found.append(f"{node.op} '{node.name}' scales a sum over an axis of the size {n} by {item:.6g}, "
                                 f"which a function of the size would read the same at {n}")
                    break
    return found


def _uniform_scale(node: gs.Node, const: gs.Tensor, value: np.ndarray, wanted: list[int], shape,
                   constant_value) -> list[str]:
    """A vector of one number repeated that scales a sum over an axis of the size once taken (`h.sum(1) *
    torch.full((D,), 1 / (T - 5))`, red team 41): doubted as that number would be. Not one that scales data before
    it is summed: a LayerScale at its initial value (`1e-6 * ones(D)`, then a residual and a mean) is one (helper
    70)."""
    item, tolerance = float(value.reshape(-1)[0]), REL_TOL[value.dtype]
    if node.op not in SCALES or not np.all(value == value.reshape(-1)[0]) \
            or any(math.isclose(item, c, rel_tol=tolerance) for c in COMMON):
        return []
    for n in wanted:
        near = _near(node, const, n, shape, constant_value)
        if near is not None and near.summed and near.taken:
            return [f"{node.op} '{node.name}' scales a sum over an axis of the size {n} by {item:.6g} (in a vector of "
                    f"{value.size}), which a function of the size would read the same at {n}"]
    return []


def _widths_near(node: gs.Node, const: gs.Tensor, shape) -> set[int]:
    """The static dims above 2 of the node's other operands and of the tensors they are computed from, within
    HOPS ops: a constant that is a plain form of one of them (`1 / sqrt(16)` dividing scores computed from queries
    of 16 features, `32 ** -0.25` scaling the queries themselves, as the TorchScript exporter writes SDPA) is the
    model's scale of that width, where it is also a form of the length (helper 65: transformers' BERT traced at
    256 tokens, 0.25 = 256 ** -0.25, and at 1024, was refused). Not a width equal to the size itself: downstream
    of the baked Reshape the length shows as that number (BERT traced at as many tokens as its head has features
    stays refused, as it was)."""
    widths: set[int] = set()
    frontier, seen = [t for t in node.inputs if t is not const], set()
    for _ in range(HOPS):
        step = []
        for tensor in frontier:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            widths.update(d for d in shape(tensor) or () if isinstance(d, int) and d > 2)
            step.extend(t for producer in tensor.inputs for t in producer.inputs if not is_table(t))
        frontier = step
    return widths


def _nodes(graph: gs.Graph) -> Iterator[gs.Node]:
    """The graph's nodes, its subgraphs' and its local functions'."""
    graphs = [graph, *getattr(graph, "functions", ())]
    while graphs:
        current = graphs.pop()
        for node in current.nodes:
            yield node
            graphs.extend(node.subgraphs())


class Near(NamedTuple):
    """What the value a constant meets holds: a sum (or extreme) over an axis of the size, with the static dims
    of what was summed, or positions along it (a Range, no dims); `taken`: the sum was taken before the constant
    meets it (found up the graph), not after."""

    summed: bool
    dims: list[int]
    taken: bool = False


def _near(node: gs.Node, const: gs.Tensor, n: int, shape, constant_value) -> Near | None:
    """A sum over an axis of size `n` (or a dim the graph left symbolic) that the node's other operand comes
    from, or its output goes to, within HOPS ops, or positions along such an axis (a Range the other operand
    comes from); None where neither is near."""
    other = next((t for t in node.inputs if t is not const), None)
    frontier = [(other, "up"), *((out, "down") for out in node.outputs)]
    for _ in range(SUM_HOPS):
        step = []
        for tensor, way in frontier:
            if tensor is None:
                continue
            nexts = tensor.inputs[:1] if way == "up" else tensor.outputs
            for op in nexts:
                if op.op in SUMS or (op.op in EXTREMES and way == "up"):
                    dims = shape(op.inputs[0]) if op.inputs else None
                    reduced = _reduced(op, dims, constant_value) if dims is not None else ()
                    if any(d == n or not isinstance(d, int) for d in reduced):
                        return Near(True, [d for d in dims if isinstance(d, int) and d > 1], way == "up")
                elif op.op == "Range" and way == "up":
                    dims = shape(op.outputs[0]) if op.outputs else None
                    if dims is None or any(d == n or not isinstance(d, int) for d in dims):
                        return Near(False, [])
                elif op.op in PASSES or (op.op in LINEAR and all(is_table(t) for t in op.inputs[1:])):
                    step.extend((t, way) for t in (op.inputs[:1] if way == "up" else op.outputs))
        frontier = step
    return None


def _reduced(node: gs.Node, dims: list, constant_value) -> list:
    """The dims a reduction sums over (its `axes` attribute or constant input, as a Constant node gives it too;
    all of them without; a global pool's past the channels)."""
    if node.op in GLOBAL_POOLS:
        return list(dims[2:])
    if node.op == "Einsum":  # the first operand's letters the output drops (`btd->bd` sums over t)
        terms = str(node.attrs.get("equation", "")).replace(" ", "").split("->")
        first = terms[0].split(",")[0] if len(terms) == 2 else ""
        if "." in first or len(first) != len(dims):
            return []
        return [dim for letter, dim in zip(first, dims, strict=True) if letter not in terms[1]]
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and is_table(node.inputs[1]):
        value = constant_value(node.inputs[1])
        axes = None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]
    return list(dims) if not axes else [dims[a] for a in axes if -len(dims) <= a < len(dims)]


def _times_dims(dims: list[int]) -> list[tuple[str, Callable[[int], float]]]:
    """n times a dim of the summed value, and its inverse (`h.sum((1, 2)) / (T * D)`)."""
    return [form for d in sorted(set(dims)) for form in ((f"{{}}*{d}", lambda n, d=d: n * d),
                                                          (f"1/({{}}*{d})", lambda n, d=d: 1 / (n * d)))]


def _int_echoes(nodes: list[gs.Node], wanted: list[int], constant_value, shape, fixed, lengths: list[int]
                ) -> list[str]:
    """Integer constants that index or cut data along an axis of the size, meet an integer value that is no
    size, fill a ConstantOfShape, size a Pool or repeat a Tile (the forms of the module's docstring)."""
    found = []
    for node in nodes:
        for where, item, forms in _int_reads(node, constant_value, shape, lengths):
            if item in wanted and fixed(node):
                continue  # the fix's own constant
            form = next((text.format(n) for n in wanted for text, of in forms if of(n) == item), None)
            if form is not None:
                found.append(f"{node.op} '{node.name}' reads the integer {item} as {where}, which is {form}")
                break
    return found


def _int_reads(node: gs.Node, constant_value, shape, lengths: list[int]) -> Iterator[tuple[str, int, tuple]]:
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

    if node.op in CUT_INPUTS and node.inputs:
        items = [(small_int(node.inputs[i]), STEP_CUTS if (node.op, i) == ("Slice", 4) else INT_CUTS)
                 for i in CUT_INPUTS[node.op] if i < len(node.inputs)]
        if any(item for item, _ in items) and _cuts_a_length(node, constant_value, shape(node.inputs[0]), lengths) \
                and not _is_size(node.inputs[0]):
            yield from ((f"{'an index' if node.op == 'Gather' else 'a cut'}", item, forms) for item, forms in items
                        if item)
    elif node.op in VALUE_OPS:
        items = [small_int(tensor) for tensor in node.inputs]
        if any(items) and not any(_is_size(t) for t in node.inputs if not is_table(t)):
            yield from (("a value", item, INT_VALUES) for item in items if item)
    elif node.op == "Tile" and len(node.inputs) > 1 and is_table(node.inputs[1]):
        repeats = constant_value(node.inputs[1])
        if repeats is not None and repeats.dtype.kind in "iu" and repeats.size <= 8:
            yield from (("its repeats", int(r), INT_KERNELS) for r in repeats.reshape(-1) if abs(int(r)) > 2)
    elif node.op == "ConstantOfShape" and isinstance(node.attrs.get("value"), gs.Constant):
        item = small_int(node.attrs["value"], integral=True)
        if item is not None:
            yield "the value it fills", item, INT_VALUES
    elif node.op in POOLS:
        for attr in ("kernel_shape", "strides"):
            for item in node.attrs.get(attr) or ():
                if abs(int(item)) > 2:
                    yield f"its {attr}", int(item), INT_KERNELS


def _cuts_a_length(node: gs.Node, constant_value, dims: list | None, lengths: list[int]) -> bool:
    """Whether the node picks or cuts along an axis that is dynamic, of unknown size, or of one of `lengths`
    (downstream of a baked Reshape, and in a static export, a length shows as a number): an axis a size can be
    baked along, not a model's fixed features (`x[..., :3]`)."""
    if dims is None:
        return True
    if node.op == "Slice":
        axes = constant_value(node.inputs[3]) if len(node.inputs) > 3 and is_table(node.inputs[3]) else None
        axes = [int(a) for a in axes.reshape(-1)] if axes is not None else list(range(len(dims)))
    else:
        axes = [int(node.attrs.get("axis", 0 if node.op == "Gather" else -1))]
    picked = [dims[a] for a in axes if -len(dims) <= a < len(dims)]
    return not picked or any(not isinstance(d, int) or d in lengths for d in picked)


def _lengths(graph: gs.Graph, wanted: list[int]) -> list[int]:
    """The sizes of `wanted` that a static axis of that size is taken for: those no weight of the graph has as a
    dim. A weight's dim is a feature width (a GLU's `z[..., :32]` of 64 features, exported at T = 64, cuts
    features, not the length); a length is no weight's dim."""
    widths = {d for t in graph.tensors().values() if isinstance(t, gs.Constant) and len(t.shape) >= 2
              for d in t.shape}
    return [n for n in wanted if n not in widths]


def _is_size(tensor: gs.Tensor) -> bool:
    """Whether the tensor is a size or a shape vector: computed from a Shape or Size op within SHAPE_HOPS ops of
    a size's own arithmetic (SIZE_OPS). A constant meeting it is the model's own number beside a size
    (`(T + 7) // 8`). Not data that a shape merely shaped (an attention output reshaped with `x.shape[0]`), nor
    positions (`(T - 1) - arange(T)`: a Range's output is data)."""
    frontier, seen = [tensor], set()
    for _ in range(SHAPE_HOPS):
        step = []
        for current in frontier:
            for producer in current.inputs:
                if producer.op in ("Shape", "Size"):
                    return True
                if producer.op in SIZE_OPS and id(producer) not in seen:
                    seen.add(id(producer))
                    step.extend(producer.inputs if producer.op != "Reshape" else producer.inputs[:1])
        frontier = step
    return False
