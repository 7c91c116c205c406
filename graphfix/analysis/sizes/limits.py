"""Limits a graph sets on its sizes, read from the constraints the size analysis records: a length capped by a
table of fixed rows (`Min(512, S) == S`), output dims the exporter declared dynamic that the analysis finds
fixed (a constant upstream may stand for a size the exporter was told varies), and Pads that take a length to a
fixed one (`40 - T` padded to T).

    for cap in caps(sizes): ...            # S <= 512 at '/Gather'
    frozen_by_other_entries(sizes, node, entry.index)
    for pad in fixed_length_pads(sizes): ...
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs

from graphfix.analysis.sizes.core import Constraint, Sizes
from graphfix.core.lazy import sympy  # imported on first use: see graphfix.core.lazy


@dataclass
class Cap:
    """A constraint `Min(limit, s) == s`: the graph runs only while s <= limit (a length cut by a fixed size)."""

    constraint: Constraint
    symbol: sympy.Symbol
    limit: int


def caps(sizes: Sizes) -> list[Cap]:
    """One Cap per (symbol, limit), in graph order."""
    found: dict[tuple, Cap] = {}
    for constraint in sizes.constraints:
        for capped, free in ((constraint.left, constraint.right), (constraint.right, constraint.left)):
            if isinstance(capped, sympy.Min) and free.is_Symbol and free in capped.args and len(capped.args) == 2:
                limit = next(a for a in capped.args if a != free)
                if limit.is_Integer:
                    found.setdefault((free, int(limit)), Cap(constraint, free, int(limit)))
    return list(found.values())


@dataclass
class FrozenOutput:
    """Axis `axis` of graph output `name` is declared dynamic (`dim`) but the analysis finds it fixed at `value`:
    a constant upstream stands for a size the exporter was told varies."""

    name: str
    axis: int
    dim: str
    value: int

    @property
    def why(self) -> str:
        return (f"output '{self.name}' declares axis {self.axis} dynamic ({self.dim}) and it stays {self.value}, "
                "another constant of this shape: that entry may stand for a size too, and the element count alone "
                "does not say which")


def frozen_outputs(sizes: Sizes) -> list[FrozenOutput]:
    """Graph outputs' dims declared by name (as the graph's outputs carry them: the exporter's dynamic axes) that
    the analysis computes as one whole number at every size."""
    found = []
    for tensor in sizes.graph.outputs:
        dims, shape = tensor.shape, sizes.shape(tensor)
        if not dims or shape is None or len(dims) != len(shape):
            continue
        for axis, (dim, size) in enumerate(zip(dims, shape, strict=True)):
            if isinstance(dim, str) and dim and size is not None and size.is_Integer and size > 1 \
                    and not made_up_dim(dim, tensor.name, axis):
                found.append(FrozenOutput(tensor.name, axis, dim, int(size)))
    return found


def made_up_dim(dim: str, output: str, axis: int) -> bool:
    """A name the TorchScript exporter invents for a dim it could not infer (`Reluy_dim_2` for axis 2 of `y`, the
    output of a Relu), not one the user declared dynamic."""
    return dim.endswith(f"{output}_dim_{axis}")


def frozen_by_other_entries(sizes: Sizes, node: gs.Node, index: int) -> list[FrozenOutput]:
    """The declared-dynamic output dims that stay fixed at the value of a constant entry of `node`'s shape other
    than entry `index`, the solved one: that entry may stand for a size too (`reshape(B, int(T) // 3, 12)` traced
    at T=6: the count says 12 is 2*T, yet the output declared [B, G] keeps the 2)."""
    kept = {int(t) for k, t in enumerate(sizes.value(node.inputs[1]) or ())
            if k != index and getattr(t, "is_Integer", False) and t > 1}
    return [f for f in frozen_outputs(sizes) if f.value in kept]


@dataclass
class FixedPad:
    """Pad `node` takes axis `axis`, `length` long (a size), to `padded` at every size: its amounts are `padded -
    length` (split between the two ends), a length computed in Python while tracing or a pad to a maximum."""

    node: gs.Node
    axis: int
    length: sympy.Expr
    padded: int


def fixed_length_pads(sizes: Sizes) -> list[FixedPad]:
    """Each axis a Pad takes from a size to one whole number, in graph order."""
    found = []
    for node in sizes.graph.nodes:
        if node.op != "Pad" or not node.outputs:
            continue
        shape, out = sizes.shape(node.inputs[0]), sizes.shape(node.outputs[0])
        if shape is None or out is None or len(shape) != len(out):
            continue
        for axis, (before, after) in enumerate(zip(shape, out, strict=True)):
            if before is not None and after is not None and before.free_symbols and after.is_Integer:
                found.append(FixedPad(node, axis, before, int(after)))
    return found


def downstream_outputs(sizes: Sizes, node: gs.Node) -> set[str]:
    """The names of the graph outputs that `node` feeds, directly or not."""
    names = {t.name for t in sizes.graph.outputs}
    seen, todo, reached = set(), [node], set()
    while todo:
        current = todo.pop()
        for tensor in current.outputs:
            reached |= {tensor.name} & names
            for consumer in tensor.outputs:
                if id(consumer) not in seen:
                    seen.add(id(consumer))
                    todo.append(consumer)
    return reached


def frozen_by_pads(model: onnx.ModelProto, pads: list[FixedPad], frozen: list[FrozenOutput]) -> list[FrozenOutput]:
    """Those of `frozen` that the Pads hold fixed: with their amounts made unknown (a graph input each, in a copy of
    `model`), the analysis no longer finds them at that value. An output fixed by something else (an Expand to 4)
    stays fixed there, and is not the Pads' doing."""
    from graphfix.analysis.sizes import static_sizes

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    outputs = {pad.node.outputs[0].name for pad in pads}
    for k, node in enumerate(n for n in copy.graph.node
                             if n.op_type == "Pad" and n.output and n.output[0] in outputs and len(n.input) > 1):
        free = f"graphfix_free_pads_{k}"
        rank = len(next(p for p in pads if p.node.outputs[0].name == node.output[0]).node.inputs[0].shape or ())
        copy.graph.input.append(onnx.helper.make_tensor_value_info(free, onnx.TensorProto.INT64, [2 * rank or None]))
        node.input[1] = free
    still = {(f.name, f.axis, f.value) for f in frozen_outputs(static_sizes(copy)[0])}
    return [f for f in frozen if (f.name, f.axis, f.value) not in still]
