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
  `h.sum((1, 2)) / (T * D)`): also n - 1, n + 1, 2n, n times a dim of that value, log n, and their inverses.
  An attention scale `1 / sqrt(64)` is 1/(n - 1) at n = 9 (helper 56), but it meets the queries, which nothing
  summed over the length.
Only sizes above 2, and no form that gives 0.5, 1 or 2 (every GELU's and every mean of two's own numbers).
Constants of one element are read, in the graph, its subgraphs and its local functions; a float16 constant is
compared at float16's precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.sizes.ops import is_table

ARITHMETIC = frozenset({"Add", "Sub", "Mul", "Div", "Pow"})
SUMS = frozenset({"ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp"})
PASSES = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Identity", "Flatten", "Neg", "Sqrt",
                    "Abs", "Add", "Sub", "Mul", "Div"})  # a sum seen through these is still the value's
COMMON = (0.5, 1.0, 2.0)  # what a function of a small size gives, and what models hold for their own reasons
PLAIN = (("{}", lambda n: n), ("1/{}", lambda n: 1 / n), ("sqrt({})", math.sqrt), ("1/sqrt({})", lambda n: n ** -0.5))
SUMMED = (("{} - 1", lambda n: n - 1), ("1/({} - 1)", lambda n: 1 / (n - 1)), ("{} + 1", lambda n: n + 1),
          ("1/({} + 1)", lambda n: 1 / (n + 1)), ("2*{}", lambda n: 2 * n), ("1/(2*{})", lambda n: 1 / (2 * n)),
          ("log({})", math.log), ("1/log({})", lambda n: 1 / math.log(n)))
REL_TOL = {np.dtype(np.float16): 2e-3, np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
HOPS = 6  # ops walked from the constant's node to a sum


def echoes(graph: gs.Graph, sizes: Iterable[int], constant_value: Callable[[gs.Tensor], np.ndarray | None],
           shape: Callable[[gs.Tensor], list | None]) -> list[str]:
    """For each one-element float constant an arithmetic op reads that equals a form of one of `sizes` (the sizes
    a fix makes follow the input), a line naming it. `constant_value` and `shape` are the rule context's."""
    wanted = sorted({n for n in sizes if isinstance(n, int) and n > 2})
    if not wanted:
        return []
    found, seen = [], set()
    for node in _nodes(graph):
        if node.op not in ARITHMETIC:
            continue
        for tensor in node.inputs:
            if id(tensor) in seen or not is_table(tensor):
                continue
            seen.add(id(tensor))
            value = constant_value(tensor)
            if value is None or value.size != 1 or value.dtype not in REL_TOL:
                continue
            item, tolerance = float(value.reshape(-1)[0]), REL_TOL[value.dtype]
            for n in wanted:
                summed = _summed_dims(node, tensor, n, shape)
                forms = [*PLAIN, *SUMMED, *_times_dims(summed)] if summed is not None else PLAIN
                form = next((text.format(n) for text, of in forms if not any(math.isclose(of(n), c) for c in COMMON)
                             and math.isclose(item, of(n), rel_tol=tolerance)), None)
                if form is not None:
                    found.append(f"{node.op} '{node.name}' reads {item:.6g}, which is {form} for the size {n}")
                    break
    return found


def _nodes(graph: gs.Graph) -> Iterator[gs.Node]:
    """The graph's nodes, its subgraphs' and its local functions'."""
    graphs = [graph, *getattr(graph, "functions", ())]
    while graphs:
        current = graphs.pop()
        for node in current.nodes:
            yield node
            graphs.extend(node.subgraphs())


def _summed_dims(node: gs.Node, const: gs.Tensor, n: int, shape) -> list[int] | None:
    """The static dims of a value summed over an axis of size `n` (or a dim the graph left symbolic) that the
    node's other operand comes from, or its output goes to, within HOPS ops; None where no such sum is near."""
    other = next((t for t in node.inputs if t is not const), None)
    frontier = [(other, "up"), *((out, "down") for out in node.outputs)]
    for _ in range(HOPS):
        step = []
        for tensor, way in frontier:
            if tensor is None:
                continue
            nexts = tensor.inputs[:1] if way == "up" else tensor.outputs
            for op in nexts:
                if op.op in SUMS:
                    dims = shape(op.inputs[0]) if op.inputs else None
                    if dims is not None and any(d == n or not isinstance(d, int) for d in _reduced(op, dims)):
                        return [d for d in dims if isinstance(d, int) and d > 1]
                elif op.op in PASSES:
                    step.extend((t, way) for t in (op.inputs[:1] if way == "up" else op.outputs))
        frontier = step
    return None


def _reduced(node: gs.Node, dims: list) -> list:
    """The dims a reduction sums over (its `axes` attribute or constant input; all of them without)."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
        axes = [int(a) for a in np.asarray(node.inputs[1].values).reshape(-1)]
    return list(dims) if not axes else [dims[a] for a in axes if -len(dims) <= a < len(dims)]


def _times_dims(dims: list[int]) -> list[tuple[str, Callable[[int], float]]]:
    """n times a dim of the summed value, and its inverse (`h.sum((1, 2)) / (T * D)`)."""
    return [form for d in sorted(set(dims)) for form in ((f"{{}}*{d}", lambda n, d=d: n * d),
                                                          (f"1/({{}}*{d})", lambda n, d=d: 1 / (n * d)))]
