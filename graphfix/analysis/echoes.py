"""Echoes of a baked size: float constants of the graph that equal a simple function of it.

`T = int(x.shape[1])` used twice, in a head split (`reshape(B, T, H, D)`, whose element count pins the entry:
GF004 rebuilds it) and in a mean (`h.sum(1) / T`, a Div by the float 12.0 that runs at every length). Rebuilding
the Reshape lets the model run at other lengths, where the Div still divides by the export length; the original
failed there, so no reference shows it, and the repair was written with exit 0 (helper 54). The graph cannot
say whether such a constant is the same Python int or the model's own number (an attention scale that equals
1/sqrt(T) at the export length), so a fix that makes that size follow the input is doubted where one is read:
exported at a length no model constant echoes (13 rather than 16), the doubt goes away.

Only values above 2 are looked for, and a function of one that gives 0.5, 1 or 2 is not: those are every GELU's
and every mean of two's own numbers, so at T = 4 `1/sqrt(T)` is not asked for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import onnx_graphsurgeon as gs

from graphfix.analysis.sizes.ops import is_table

ARITHMETIC = frozenset({"Add", "Sub", "Mul", "Div", "Pow"})
COMMON = (0.5, 1.0, 2.0)  # what a function of a small size gives, and what models hold for their own reasons
FORMS = (("{}", lambda n: n), ("1/{}", lambda n: 1 / n), ("sqrt({})", math.sqrt), ("1/sqrt({})", lambda n: n ** -0.5),
         ("{} - 1", lambda n: n - 1), ("1/({} - 1)", lambda n: 1 / (n - 1)))
REL_TOL = 1e-6  # a float32 constant of the value: 1/12 in float32 is 0.083333336


def echoes(graph: gs.Graph, sizes: Iterable[int], constant_value) -> list[str]:
    """For each float constant of one element that an arithmetic op reads and that equals a function of one of
    `sizes` (the export sizes a fix makes follow the input), a line naming it: "Div '/Div' reads 12 (T = 12)".
    `constant_value(tensor)` is the rule context's (None for a tensor that is no constant)."""
    wanted = [n for n in set(sizes) if isinstance(n, int) and n > 2]
    if not wanted:
        return []
    found, seen = [], set()
    for node in graph.nodes:
        if node.op not in ARITHMETIC:
            continue
        for tensor in node.inputs:
            if id(tensor) in seen or not is_table(tensor):
                continue
            seen.add(id(tensor))
            value = constant_value(tensor)
            if value is None or value.size != 1 or value.dtype.kind != "f":
                continue
            item = float(value.reshape(-1)[0])
            for n in wanted:
                form = next((text.format(n) for text, of in FORMS
                             if not any(math.isclose(of(n), c) for c in COMMON)
                             and math.isclose(item, of(n), rel_tol=REL_TOL)), None)
                if form is not None:
                    found.append(f"{node.op} '{node.name}' reads {item:.6g}, which is {form} at the export size {n}")
                    break
    return found

