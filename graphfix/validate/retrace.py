"""The original re-traced: the graph the exporter would have written, had it traced at another size.

Where the size analysis solves a Reshape's element count for the export-time size (T = 7 baked into the
`Concat([7], B*4, [4])` of a MultiheadAttention), a constraint met by a Slice cut at a constant end (`x[:, :6]`
for `x[:, :int(T) - 1]`), or a Pad that rounds a length up to a multiple only at export (`(4 - int(T) % 4) % 4`),
the constant that holds it is a known expression of the sizes. Setting each
such entry to its expression's value at a probe size gives the original as a trace at that size would have
produced it: the same nodes and weights, only those constants changed. The repaired model computes the same
entries at run time from Shape ops instead, so the two must agree: the derived check (graphfix.validate.evidence).
It is built from the same analysis as the fix, so it shows that the rewrite implements the analysis, never that the
analysis is right, and it counts toward no evidence level. There is none where an entry is ambiguous (several
expressions fit: the repair then names the one it built, see graphfix.core.rule.Choice) or cannot be located in a
constant. Each rule declares what its analysis finds baked (`Rule.baked_entries`, `Rule.baked_operands`): no list
here names them.

Structured constants cut at an export-time size (a causal mask `tril(ones(7, 7))`, `eye(7)`, `arange(7)`, the
first 7 rows of a table still in the graph; graphfix.analysis.structured) are re-traced the same way: each is
computed again at the probe size. One such constant that is not structural (a table whose other rows are gone)
leaves no re-trace.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from graphfix.validate.runner import ModelRunner

if TYPE_CHECKING:
    import sympy

SUFFIX = "_gf_retraced"


@dataclass(frozen=True)
class BakedConstant:
    """Element `position` of the constant vector fed to input `slot` of node number `node` is `expr` at export.
    `base` is the whole vector where it is computed from constants rather than one (F.pad's pads); `least` the
    smallest valid value (0 for a pad amount)."""

    node: int
    slot: int
    position: int
    value: int
    expr: sympy.Expr
    base: tuple[int, ...] | None = None
    least: int = 1


@dataclass(frozen=True, eq=False)
class BakedOperand:
    """Input `slot` of node number `node` is a structured constant whose `axes` (axis, dim name) were cut at the
    export size; `regrow` computes it for other sizes (axis -> size)."""

    node: int
    slot: int
    axes: tuple[tuple[int, str], ...]
    regrow: Callable[[dict[int, int]], np.ndarray | None]


class Retracer:
    """Builds runners of the original re-traced at a binding; `baked` is empty when there is nothing to re-trace."""

    def __init__(self, original: ModelRunner, choices: dict[str, int] | None = None):
        self.original = original
        self.choices = dict(choices or {})  # Reshape name -> the shape-vector entry the repair rebuilt

    @functools.cached_property
    def context(self):
        return _context(self.original.proto, self.original.weights)

    @functools.cached_property
    def baked(self) -> list[BakedConstant]:
        return baked_constants(self.original.proto, self.context, self.choices)

    @functools.cached_property
    def operands(self) -> list[BakedOperand] | None:
        return baked_operands(self.original.proto, self.context)

    def describe(self) -> str:
        names = sorted({str(b.expr) for b in self.baked} | {d for o in self.operands or () for _, d in o.axes})
        parts = [f"{len(self.baked)} baked entr{'y' if len(self.baked) == 1 else 'ies'}"] if self.baked else []
        count = len(self.operands or ())
        parts += [f"{count} structured constant{'' if count == 1 else 's'}"] if count else []
        return f"{' and '.join(parts)} ({', '.join(names)})"

    def at(self, binding: dict[str, int]) -> ModelRunner | None:
        """A runner of the original with every baked entry set for `binding`; None when there are none or an
        entry's expression is not a positive whole number there."""
        if self.operands is None or not (self.baked or self.operands):
            return None
        values = {}
        for baked in self.baked:
            symbols = {s: binding.get(s.name) for s in baked.expr.free_symbols}
            if None in symbols.values():
                return None
            value = baked.expr.subs(symbols)
            if not value.is_Integer or value < baked.least:
                return None
            values[baked] = int(value)
        arrays = {}
        for operand in self.operands:
            if any(name not in binding for _, name in operand.axes):
                return None
            arrays[operand] = operand.regrow({axis: binding[name] for axis, name in operand.axes})
            if arrays[operand] is None:
                return None
        source = self.original
        proto = retraced(source.proto if source.weights else source.full_proto(), values, arrays)
        if proto is None:
            return None
        if source.weights:
            return ModelRunner(proto, source.base_dir, weights=source.weights, fed=source.fed)
        return ModelRunner(proto, source.base_dir)


def _context(model: onnx.ModelProto, weights=None):
    from graphfix.analysis.context import RuleContext
    from graphfix.analysis.shapes import infer_shapes
    from graphfix.core.rule import RuleOptions
    from graphfix.io.graphs import import_graph  # a light model's stubs read through their weights (#23)

    inferred = infer_shapes(model)
    return RuleContext(inferred, import_graph(inferred, None, weights), None, RuleOptions(static=True))


def baked_operands(model: onnx.ModelProto, ctx=None) -> list[BakedOperand] | None:
    """Each structured constant of `model` cut at an export-time size, as the rules declare them
    (`Rule.baked_operands`); None when one is not structural."""
    from graphfix.analysis.structured import regrown

    ctx = ctx or _context(model)
    index = {id(node): k for k, node in enumerate(ctx.graph.nodes)}
    found = []
    for baked in (operand for rule in _rules() for operand in rule.baked_operands(ctx)):
        if regrown(ctx, baked, {}) is None:
            return None
        found.append(BakedOperand(index[id(baked.node)], baked.index, tuple(baked.axes),
                                  functools.partial(regrown, ctx, baked)))
    return found


def baked_constants(model: onnx.ModelProto, ctx=None, choices: dict[str, int] | None = None) -> list[BakedConstant]:
    """Each solved baked entry of `model`, as the rules declare them (`Rule.baked_entries`: one candidate
    expression, or the one `choices` names for its Reshape), located in the constant that holds it."""
    from graphfix.analysis.sizes import sizes_of

    ctx = ctx or _context(model)
    sizes = sizes_of(ctx)
    index = {id(node): k for k, node in enumerate(ctx.graph.nodes)}
    found = []
    for node, slot, element, value, expr, *folded in (entry for rule in _rules()
                                                       for entry in rule.baked_entries(sizes, choices or {})):
        if folded:  # a vector computed from constants (F.pad's pads): the whole vector, folded
            vector, least = folded
            found.append(BakedConstant(index[id(node)], slot, element, value, expr, tuple(vector), least=least))
            continue
        place = _locate(node, slot, element, sizes)
        if place is None:
            return []  # one entry that cannot be re-traced leaves the whole re-trace wrong at other sizes
        holder, slot, position = place
        found.append(BakedConstant(index[id(holder)], slot, position, value, expr))
    return found


def _rules():
    from graphfix.core.registry import load_rules

    return load_rules()[0]


def _locate(node: gs.Node, slot: int, position: int, sizes, depth: int = 8) -> tuple[gs.Node, int, int] | None:
    """(node, input slot, element) of the constant that element `position` of `node.inputs[slot]` comes from,
    through Concat and Cast."""
    tensor = node.inputs[slot]
    producer = tensor.inputs[0] if tensor.inputs else None
    if isinstance(tensor, gs.Constant) or (producer is not None and producer.op == "Constant"):
        return node, slot, position
    if producer is None or depth == 0:
        return None
    if producer.op == "Cast":
        return _locate(producer, 0, position, sizes, depth - 1)
    if producer.op != "Concat":
        return None
    start = 0
    for k, part in enumerate(producer.inputs):
        length = len(sizes.value(part) or ())
        if not length:
            return None
        if position < start + length:
            return _locate(producer, k, position - start, sizes, depth - 1)
        start += length
    return None


def retraced(model: onnx.ModelProto, values: dict[BakedConstant, int],
             arrays: dict[BakedOperand, np.ndarray] | None = None) -> onnx.ModelProto | None:
    """A copy of `model` with each baked entry set to its value and each structured constant replaced by its
    array (None when a constant cannot be read): the constant is copied to a new initializer, so that other
    readers of it keep theirs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    constants = _constant_arrays(graph)
    patched: dict[tuple[int, int], np.ndarray] = {}
    for baked, value in values.items():
        key = (baked.node, baked.slot)
        if key not in patched:
            name = graph.node[baked.node].input[baked.slot]
            if name not in constants and baked.base is None:
                return None
            patched[key] = constants[name].copy() if name in constants else np.array(baked.base, np.int64)
        patched[key].reshape(-1)[baked.position] = value
    for operand, array in (arrays or {}).items():
        patched[operand.node, operand.slot] = array
    for (node, slot), array in patched.items():
        name = f"{graph.node[node].input[slot]}{SUFFIX}{node}_{slot}"
        graph.initializer.append(numpy_helper.from_array(array, name))
        graph.node[node].input[slot] = name
    return out


def _constant_arrays(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer
              if t.data_location != onnx.TensorProto.EXTERNAL and len(t.dims) <= 1}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and len(value.dims) <= 1 and value.data_location != onnx.TensorProto.EXTERNAL:
                arrays[node.output[0]] = numpy_helper.to_array(value)
    return arrays
