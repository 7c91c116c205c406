"""Sizes off a step the graph's own shapes need: what a failure there may be, and the sizes to give instead.

    steps = graph_steps(model)  # [Step("H", 8, (0,), "/Concat_6", ...)]: floor(H/8) meets ceil(H/8), equal at 8 n

torchvision's RAFT computes `h // 8` from the image's shape for its grid of coordinates and meets it with the
features three stride-2 Convs make of the image (ceil(H / 8)): the two agree only where H is a multiple of 8, and the
probe's sizes fail (#22). PyTorch refuses those sizes too (RAFT raises), but TorchScript drops the check, and a pad
to a multiple of 8 that the trace dropped with its branch (`if H % 8: x = F.pad(...)`, PyTorch then runs at every
size) leaves the same graph, node for node (`tests/frontends/test_raft.py`). So such a step is not taken for the
model's domain (graphfix.analysis.sizes.domain takes only what the exporter checked): the sizes are still probed,
and the failure says what the graph shows and which sizes to give with `--shape` where the model takes no others.

A step is read from a constraint of the size analysis (`Sizes.constraints`) over one input dim whose two sides both
grow with it (a constant side is a baked size: GF004's) and that holds exactly at k n + c, for one residue c or
several, from its first size on, k > 1: timm's MaxViT adds a stride-2 Conv's `ceil(H / 2)` to an AvgPool
shortcut's `floor(H / 2)`, and HRNet a branch upsampled by 2 to one at twice its resolution, which agree at some
sizes of every 16 or 32 (helpers 92 and 93; PyTorch fails at the others too). A failure at the very node of such
a constraint is GF000's: no constant is involved, so neither a baked repeat count (GF002), a baked shape (GF004)
nor a mask of a lower rank (GF003) is its cause.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from graphfix.analysis.sizes.domain import constraint_sides
from graphfix.core.lazy import sympy  # imported on first use: see graphfix.core.lazy
from graphfix.core.recent import per_model
from graphfix.validate.graph_sizes import dim_names, graph_inputs

SPAN = 128  # sizes 1..SPAN are tried: three periods of a step of 32 (five stride-2 Convs) and more


@dataclass(frozen=True)
class Step:
    """The graph's shapes agree at `node` only where input dim `dim` is k n + c, c one of `residues`."""

    dim: str
    k: int
    residues: tuple[int, ...]
    node: str
    left: str
    right: str

    def sizes(self) -> str:
        if self.residues == (0,):
            return f"multiples of {self.k}"
        if len(self.residues) == 1:
            return f"sizes {self.k} n + {self.residues[0]}"
        among = f" (multiples of {self.k} among them)" if 0 in self.residues else ""
        return f"{len(self.residues)} sizes in every {self.k}{among}"

    def off(self, binding: dict[str, int]) -> bool:
        return self.dim in binding and binding[self.dim] % self.k not in self.residues


@per_model  # a failure at every probe size asks
def graph_steps(model: onnx.ModelProto) -> list[Step]:
    """Each step that a constraint of the size analysis puts on one input dim (see the module's docstring)."""
    found, solved = [], {}  # one step per node; each difference solved once (RAFT repeats it at every refinement)
    for left, right, node in constraint_sides(model):
        difference = _without_size_factors(left - right)
        free = difference.free_symbols
        if len(free) != 1 or left.is_number or right.is_number:
            continue
        symbol, key = next(iter(free)), frozenset({difference, -difference})
        if key not in solved:
            solved[key] = _step(difference, symbol)
        step = Step(symbol.name, *solved[key], node, str(left), str(right)) if solved[key] else None
        if step and step not in found:
            found.append(step)
    return found


def _without_size_factors(difference):
    """The difference without the sizes and numbers it is a multiple of: `x.reshape(B, T // 4, 4 * D)` holds its
    element count `8*B*T = 32*B*floor(T/4)` wherever `T = 4*floor(T/4)`, whatever the batch (helper 126: a step of
    the two dims was none, and the failure at T = 7 was called a baked shape)."""
    factored = sympy.factor_terms(difference)
    if not factored.is_Mul:
        return difference
    return sympy.Mul(*(f for f in factored.args if not (f.is_number or (f.is_Symbol and f.is_positive))))


def _step(difference, symbol) -> tuple[int, tuple[int, ...]] | None:
    """(k, residues) where `difference` is 0 exactly at the sizes k n + c, c among the residues, from its first zero
    on (the least such k > 1 that leaves some residue out); None otherwise."""
    zeros = [n for n in range(1, SPAN + 1) if _zero_at(difference, symbol, n)]
    if len(zeros) < 3:
        return None
    tried = range(zeros[0], SPAN + 1)
    for k in range(2, SPAN // 3 + 1):
        residues = sorted({n % k for n in zeros})
        if len(residues) < k and zeros == [n for n in tried if n % k in residues]:
            return k, tuple(residues)
    return None


def _zero_at(difference, symbol, n: int) -> bool:
    """Whether `difference` is 0 at `symbol` = n; not where it is undefined there: torchvision's swin_v2_t exported
    with dynamo pads its windows with `Mod(4, pad_H)`, a Mod by 0 at H < 4 (sympy raises ZeroDivisionError)."""
    try:
        value = difference.subs(symbol, n)
    except ArithmeticError:
        return False
    return bool(value.is_number and value == 0)


def step_hint(model: onnx.ModelProto, binding: dict[str, int], subject: str = "graph") -> str:
    """What a failure at `binding` may be where some dim of it is off a step of the graph ("" where none is)."""
    off = [step for step in graph_steps(model) if step.off(binding)]
    if not off:
        return ""
    first, dims = off[0], sorted({step.dim for step in off})
    return (f"The {subject}'s shapes agree only at {_wanted(off)}, and this size has "
            f"{', '.join(f'{d} = {binding[d]}' for d in dims)}: '{first.node}' meets {first.left} with {first.right} "
            "(torchvision's RAFT meets `H // 8`, computed from the image's shape, with what its strided Convs make of "
            "H). If the model takes only such sizes (RAFT raises on others in PyTorch too), give them with --shape: "
            f"{_shape_example(model, binding, off)}. A pad to such a size that the trace dropped with "
            f"its branch (`if {first.dim} % {first.k}: x = F.pad(...)`) leaves the same graph, so graphfix does not "
            "take them for the model's domain; where the model pads, re-export it with the pad computed by tensor "
            "ops, never behind a Python `if`.")


def failed_at_a_step(model: onnx.ModelProto, node: str, binding: dict[str, int]) -> bool:
    """Whether `node` is where the graph's shapes meet off a step at `binding`: the failure is GF000's."""
    return bool(node) and any(step.node == node and step.off(binding) for step in graph_steps(model))


def _wanted(steps: list[Step]) -> str:
    """`multiples of 8 of H and W`: each dim's largest step, dims with the same one together."""
    kept: dict[str, Step] = {}
    for step in steps:
        if step.dim not in kept or step.k > kept[step.dim].k:
            kept[step.dim] = step
    grouped: dict[str, list[str]] = {}
    for dim, step in kept.items():
        grouped.setdefault(step.sizes(), []).append(dim)
    return "; ".join(f"{sizes} of {' and '.join(dims)}" for sizes, dims in grouped.items())


def _shape_example(model: onnx.ModelProto, binding: dict[str, int], off: list[Step]) -> str:
    """`--shape` entries for every input at `binding`, each dim moved up onto every step of the graph it is off."""
    every = graph_steps(model)
    entries = []
    for vi in graph_inputs(model):
        dims = [d if isinstance(d, int) else _onto(binding.get(d, 1), [s for s in every if s.dim == d])
                for d in dim_names(vi)]
        if any(isinstance(d, str) and d in {s.dim for s in off} for d in dim_names(vi)):
            entries.append(f"--shape {vi.name}={'x'.join(map(str, dims))}")
    return " ".join(entries)


def _onto(size: int, steps: list[Step]) -> int:
    """The least multiple of every step at or above `size` where each takes multiples (a stride's multiple is the
    size a user expects, and the likeliest inside what else the model needs: MaxViT's windows); else the least
    size at or above `size` on every one of `steps` (`size` where none is met within a span)."""
    period = math.lcm(*(s.k for s in steps), 1)
    if all(0 in s.residues for s in steps):
        return -(-size // period) * period
    for n in range(size, size + period + 1):
        if not any(s.off({s.dim: n}) for s in steps):
            return n
    return size
