"""Symbolic sizes: every dim of every tensor as a sympy expression over the graph inputs' dynamic dims.

One forward pass over the graph (nodes are in topological order, as ONNX requires) gives each tensor a shape
(a tuple of expressions, or None where unknown) and each small integer tensor (a shape vector) its value, element by
element. Along the way each op's shape constraint is recorded where it does not hold identically: a Reshape's
element count, two broadcast dims, MatMul's inner dims, Concat's other dims. `solve` turns such a constraint into
the value of the symbol it pins (the export-time size a trace baked) and the expression the baked entry stands for.

Symbols are positive integers, one per named dynamic dim of the graph inputs. Range facts come from the graph:
slicing a constant table of N rows with a symbolic end bounds that end by N (`Min(512, S)` is `S` on the valid
range). A dim onnx could not name (`unk__N`) is unknown here unless the ops give it an expression.

The pass is bounded in time; past the deadline the remaining tensors stay unknown and `incomplete` says so, so an
expensive graph degrades to fewer findings, never to a hang or a false error.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.sizes.arith import as_expr
from graphfix.analysis.sizes.ops import BROADCAST, MAX_VECTOR, SAME_SHAPE, OpShapes, Shape, _present
from graphfix.core.lazy import sympy  # imported on first use: see graphfix.core.lazy

if TYPE_CHECKING:
    from sympy import Expr


@dataclass
class Constraint:
    """`left == right` must hold at every valid size for `node` to run (or to mean what it did at export)."""

    kind: str  # "reshape" | "broadcast" | "matmul" | "concat"
    node: gs.Node
    left: Expr
    right: Expr
    detail: str = ""


@dataclass
class Sizes(OpShapes):
    """The symbolic sizes of one graph state (`sizes_of(ctx)`); `constant` folds small constant tensors."""

    graph: gs.Graph
    constant: Callable[[gs.Tensor], np.ndarray | None]
    budget_s: float = 5.0
    symbols: dict[str, sympy.Symbol] = field(default_factory=dict)
    bounds: dict[sympy.Symbol, tuple[int, str]] = field(default_factory=dict)  # symbol <= N, and why
    _constraints: list[Constraint] = field(default_factory=list)
    _multiples: list[Constraint] = field(default_factory=list)  # left must be a multiple of right
    _incomplete: str = ""
    _shapes: dict[int, Shape | None] = field(default_factory=dict)
    _values: dict[int, tuple | None] = field(default_factory=dict)
    _done: bool = False

    # --- public reading -------------------------------------------------------------------------------------
    def shape(self, tensor: gs.Tensor) -> Shape | None:
        self._run()
        return self._shapes.get(id(tensor))

    def value(self, tensor: gs.Tensor) -> tuple | None:
        self._run()
        return self._values.get(id(tensor))

    def dims(self, tensor: gs.Tensor) -> list[int | str | None] | None:
        """The shape as rules print and compare it: ints, symbol names, other expressions as text, None."""
        shape = self.shape(tensor)
        if shape is None:
            return None
        return [None if d is None else (int(d) if d.is_Integer else str(d)) for d in shape]

    @property
    def incomplete(self) -> str:
        """Why the pass stopped early ("" when it covered the graph)."""
        self._run()
        return self._incomplete

    @property
    def constraints(self) -> list[Constraint]:
        """The constraints that do not hold identically, in graph order."""
        self._run()
        return self._constraints

    @property
    def multiples(self) -> list[Constraint]:
        """Lengths a Reshape with -1 splits into whole chunks: `left` must be a multiple of the integer `right`
        (kept apart from `constraints`: it holds on a residue class, not at one size)."""
        self._run()
        return self._multiples

    def symbol(self, name: str) -> sympy.Symbol:
        if name not in self.symbols:
            self.symbols[name] = sympy.Symbol(name, integer=True, positive=True)
        return self.symbols[name]

    def simplify(self, expr: Expr) -> Expr:
        """Apply the range facts: Min(N, s) is s where s <= N is known."""
        if not isinstance(expr, sympy.Basic) or not expr.has(sympy.Min):
            return expr
        subs = {}
        for m in expr.atoms(sympy.Min):
            args = m.args
            for a in args:
                if all(_le(a, b, self.bounds) for b in args if b is not a):
                    subs[m] = a
                    break
        return expr.xreplace(subs) if subs else expr

    def carrier(self, expr: Expr, near: gs.Tensor, depth: int = 64) -> tuple[gs.Tensor, int] | None:
        """The nearest tensor upstream of `near` (itself first) with a dim equal to `expr`, and its axis."""
        queue, seen = [near], set()
        while queue and depth > 0:
            depth -= 1
            tensor = queue.pop(0)
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            for axis, dim in enumerate(self.shape(tensor) or ()):
                if dim is not None and same(dim, expr):
                    return tensor, axis
            for node in tensor.inputs:
                queue.extend(t for t in node.inputs if isinstance(t, gs.Variable))
        return None

    # --- the pass -----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        if self._done:
            return
        self._done = True
        deadline = time.monotonic() + self.budget_s
        for tensor in self.graph.inputs:
            self._shapes[id(tensor)] = self._declared(tensor, fresh=True)
        for count, node in enumerate(self.graph.nodes):
            if count % 64 == 0 and time.monotonic() > deadline:
                self._incomplete = f"symbolic size analysis stopped after {self.budget_s:g} s at node '{node.name}'"
                return
            # an op variant the pass does not model: its outputs keep onnx's shapes
            with contextlib.suppress(TypeError, ValueError, ZeroDivisionError, IndexError, KeyError, AttributeError,
                                     RecursionError, sympy.SympifyError):
                self._node(node)
            for out in node.outputs:
                if self._shapes.get(id(out)) is None:
                    self._shapes[id(out)] = self._declared(out)
                if id(out) not in self._values and _small(out):
                    self._fold(out)

    def _declared(self, tensor: gs.Tensor, fresh: bool = False) -> Shape | None:
        """onnx's shape: ints stay, named dims of graph inputs become symbols, other names (unk__N) unknown."""
        if tensor.shape is None:
            return None
        dims = []
        for dim in tensor.shape:
            if isinstance(dim, int | np.integer) and dim >= 0:
                dims.append(sympy.Integer(int(dim)))
            elif isinstance(dim, str) and (fresh or dim in self.symbols):
                dims.append(self.symbol(dim))
            else:
                dims.append(None)
        return tuple(dims)

    def _in_shape(self, node: gs.Node, k: int) -> Shape | None:
        if k >= len(node.inputs) or not _present(node.inputs[k]):
            return None
        return self._in_shape_of(node.inputs[k])

    def _in_shape_of(self, tensor: gs.Tensor) -> Shape | None:
        if id(tensor) not in self._shapes:
            const = _constant_tensor(tensor)
            if const is not None and const.shape is not None:
                self._shapes[id(tensor)] = tuple(sympy.Integer(int(d)) for d in const.shape)
                if math.prod(const.shape) <= MAX_VECTOR and len(const.shape) <= 1:
                    self._fold(tensor)
            else:
                self._shapes[id(tensor)] = self._declared(tensor)
        return self._shapes[id(tensor)]

    def _fold(self, tensor: gs.Tensor) -> None:
        """The value of a small integer tensor computed from constants only (the shared evaluator folds it)."""
        value = self.constant(tensor)
        if value is not None and value.size <= MAX_VECTOR and value.ndim <= 1 and \
                (np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_):
            self._values[id(tensor)] = tuple(sympy.Integer(int(v)) for v in value.reshape(-1))

    def _in_value(self, node: gs.Node, k: int) -> tuple | None:
        if k >= len(node.inputs) or not _present(node.inputs[k]):
            return None
        self._in_shape(node, k)
        return self._values.get(id(node.inputs[k]))

    def _set(self, node: gs.Node, shape: Shape | None, value: tuple | None = None, k: int = 0) -> None:
        out = node.outputs[k]
        if shape is not None:
            shape = tuple(None if d is None else self.simplify(d) for d in shape)
        self._shapes[id(out)] = shape
        if value is not None and len(value) <= MAX_VECTOR:
            self._values[id(out)] = tuple(self.simplify(as_expr(v)) for v in value)

    def _require(self, kind: str, node: gs.Node, left: Expr | None, right: Expr | None, detail: str = "") -> None:
        if left is None or right is None:
            return
        if not same(left, right):
            self._constraints.append(Constraint(kind, node, left, right, detail))

    def _multiple(self, node: gs.Node, length: Expr, chunk: Expr) -> None:
        self._multiples.append(Constraint("multiple", node, length, chunk, "a whole number of chunks"))

    def _node(self, node: gs.Node) -> None:
        op = node.op
        handler = getattr(self, f"_op_{op}", None)
        if handler is not None:
            handler(node)
        elif op in BROADCAST:
            self._broadcast(node)
        elif op in SAME_SHAPE:
            self._set(node, self._in_shape(node, 0))


def _constant_tensor(tensor: gs.Tensor) -> gs.Constant | None:
    """The gs.Constant behind an initializer or a Constant node's output (its shape is known without reading it)."""
    if isinstance(tensor, gs.Constant):
        return tensor
    node = tensor.inputs[0] if tensor.inputs else None
    if node is not None and node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
        return node.attrs["value"]
    return None


def _small(tensor: gs.Tensor) -> bool:
    shape = tensor.shape
    return shape is not None and len(shape) <= 1 and all(isinstance(d, int) for d in shape) and \
        math.prod(shape) <= MAX_VECTOR


def same(a: Expr, b: Expr) -> bool:
    """Equal as expressions: structurally, or once expanded (cheap; sympy.simplify costs milliseconds)."""
    return a == b or sympy.expand(a - b) == 0


def _le(a: Expr, b: Expr, bounds: dict) -> bool:
    """a <= b provably, using the upper bounds of single symbols."""
    if a == b:
        return True
    if a.is_number and b.is_number:
        return bool(a <= b)
    if a.is_Symbol and b.is_number and a in bounds:
        return bounds[a][0] <= b
    return False

