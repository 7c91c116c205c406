"""How findings on broadcasting name operands, shapes and mismatched pairs of dims (`[B, T]`, `T with 768`), and
when an op with such pairs runs at all (`runs only when T is 1 or 5`)."""

from __future__ import annotations

import re

import onnx_graphsurgeon as gs

from graphfix.analysis.broadcast import Dim, Pair

WHERE_LABELS = ("condition", "X", "Y")


def operand_labels(node: gs.Node, operands: list[gs.Tensor]) -> list[str]:
    if node.op == "Where":
        return list(WHERE_LABELS[: len(operands)])
    return [f"input {k}" for k in range(len(operands))]


def show_dim(dim: Dim) -> str:
    return "?" if dim is None else str(dim)


def show_shape(shape: list[Dim]) -> str:
    return "[" + ", ".join(show_dim(d) for d in shape) + "]"


def describe_operands(labels, operands, shapes, indices) -> str:
    return " and ".join(f"{labels[i]} '{operands[i].name}' {show_shape(shapes[i])}" for i in indices)


def pairs_text(bad) -> str:
    return ", ".join(f"{a} with {b}" for *_, a, b, _v in bad)


def when_it_runs(bad) -> str:
    if any(p[-1] is Pair.CONFLICT for p in bad):
        return "fails at every input size"
    conditions = []
    for *_, a, b, verdict in bad:
        if verdict is Pair.PINNED:
            dim, size = (b, a) if isinstance(a, int) else (a, b)
            conditions.append(f"{dim} is 1 or {size}")
        else:
            conditions.append(capped(a, b) or f"{a} equals {b} (or one is 1)")
    return "runs only when " + " and ".join(dict.fromkeys(conditions))


def capped(a: Dim, b: Dim) -> str:
    """`Min(29, T)` against `T`: a length cut by a size fixed at export, so the op runs only up to that size."""
    for x, y in ((a, b), (b, a)):
        match = re.fullmatch(r"Min\((\d+), (.+)\)", str(x))
        if match and match.group(2) == str(y):
            return f"{y} <= {match.group(1)} (a size fixed at export time caps {y}; see GF006)"
    return ""


def floored(dim: Dim, size: int) -> str:
    """`Min(14, T) - 2` against 12: a window `x[:, 2:14]` that holds 12 positions once T reaches 14, so the op runs
    from there on ('T >= 14'); '' for any other pair."""
    match = re.fullmatch(r"Min\((\d+), ([A-Za-z_]\w*)\)(?: ([+-]) (\d+))?", str(dim))
    if not match:
        return ""
    cap, offset = int(match.group(1)), int(match.group(4) or 0) * (-1 if match.group(3) == "-" else 1)
    return f"{match.group(2)} >= {cap}" if cap + offset == size > 1 else ""
