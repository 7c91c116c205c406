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
expensive graph degrades to fewer findings, never to a hang or a false error. The screen below has its own bound
(SCREEN_S), on top of the pass'.

sympy costs a fifth of a second and 30 MB to import. Asked only for `constraints` (what most rules ask first), the
analysis first runs a screen: the same pass in exact polynomial arithmetic, which settles a graph whose constraints
all hold identically and gives up on anything else (see `screened`).
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

from graphfix.analysis.sizes.arith import SYMPY, TOLERATED, SympyArith, at_floors, same
from graphfix.analysis.sizes.ops import BROADCAST, SAME_SHAPE, OpShapes, Shape, _present
from graphfix.analysis.sizes.roots import Solver
from graphfix.analysis.sizes.spread import MAX_VECTOR

if TYPE_CHECKING:
    import sympy
    from sympy import Expr

    from graphfix.analysis.sizes.screen import PolyArith

SCREEN_S = 1.0  # the screen's time bound; past it the full pass decides


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
    num: SympyArith | PolyArith = SYMPY  # the arithmetic: sympy's, or the screen's polynomials (see `screened`)
    screen: bool = True  # let the screen answer `constraints` and `incomplete` where it settles them
    solver: Solver = field(default_factory=Solver)  # the constraints' roots, time bounded (`solve(c, sizes.solver)`)
    symbols: dict[str, sympy.Symbol] = field(default_factory=dict)
    bounds: dict[sympy.Symbol, tuple[int, str]] = field(default_factory=dict)  # symbol <= N, and why
    _constraints: list[Constraint] = field(default_factory=list)
    _multiples: list[Constraint] = field(default_factory=list)  # left must be a multiple of right
    _incomplete: str = ""
    _shapes: dict[int, Shape | None] = field(default_factory=dict)
    _values: dict[int, tuple | None] = field(default_factory=dict)
    _done: bool = False
    _clean: bool | None = None  # the screen's verdict, once asked
    _screen_values: dict[int, tuple | None] = field(default_factory=dict)  # the screen's, where it settled the graph

    # --- public reading -------------------------------------------------------------------------------------
    def shape(self, tensor: gs.Tensor) -> Shape | None:
        self._run()
        return self._shapes.get(id(tensor))

    def value(self, tensor: gs.Tensor) -> tuple | None:
        self._run()
        return self._values.get(id(tensor))

    def dims(self, tensor: gs.Tensor, least: dict | None = None) -> list[int | str | None] | None:
        """The shape as rules print and compare it: ints, symbol names, other expressions as text, None; where each
        symbol is at least its `least` (`own_floors`) where given."""
        shape = self.shape(tensor)
        if shape is None:
            return None
        shape = [at_floors(d, least) for d in shape] if least else shape
        return [None if d is None else (int(d) if d.is_Integer else str(d)) for d in shape]

    @property
    def incomplete(self) -> str:
        """Why the pass stopped early ("" when it covered the graph, or the screen settled it unasked)."""
        if self._clean or (not self._done and self.screened()):
            return ""
        self._run()
        return self._incomplete

    @property
    def constraints(self) -> list[Constraint]:
        """The constraints that do not hold identically, in graph order (none where the screen settled the graph
        before anything asked for the full pass: the answer stays the same once given)."""
        if self._clean or (not self._done and self.screened()):
            return []
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
            self.symbols[name] = self.num.symbol(name)
        return self.symbols[name]

    def simplify(self, expr: Expr) -> Expr:
        """Apply the range facts: Min(N, s) is s where s <= N is known."""
        return self.num.simplify(expr, self.bounds)

    def carrier(self, expr: Expr, near: gs.Tensor, depth: int = 64) -> tuple[gs.Tensor, int] | None:
        """The nearest tensor upstream of `near` (itself first) with a dim equal to `expr`, and its axis; else a
        graph input's (read anywhere: a parameter expanded to the batch, `cls.expand(int(B), -1, -1)`, has no
        tensor upstream that carries it), but not one whose dim a broadcast meets with another size: where that
        is 1, the other sets the size (`y + x`, helper 134)."""
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
        return next(((tensor, axis) for tensor in self.graph.inputs for axis, dim in enumerate(self.shape(tensor) or ())
                     if dim is not None and same(dim, expr) and not dim.free_symbols & self.broadcast_met()), None)

    def broadcast_met(self) -> set:
        """The symbols of the sizes that a broadcast meets with another size (either may be 1 where it runs)."""
        return {symbol for c in self.constraints if c.kind == "broadcast" and not c.left.is_Integer
                and not c.right.is_Integer for symbol in (c.left.free_symbols | c.right.free_symbols)}

    # --- the screen ---------------------------------------------------------------------------------------------
    def screened(self) -> bool:
        """True where the screen shows that no constraint fails to hold identically, without sympy: the same pass
        in exact polynomial arithmetic (`graphfix.analysis.sizes.screen`), which gives up (False) wherever that
        arithmetic does not decide, an op's handler fails, or it runs past its time. Healthy graphs whose sizes are
        polynomials (a Llama's) then never import sympy; every other question runs the full pass."""
        if self._clean is None:
            self._clean = False
            if self.screen and not self._done and self.num is SYMPY:
                from graphfix.analysis.sizes.poly import Unscreened
                from graphfix.analysis.sizes.screen import POLY

                probe = Sizes(self.graph, self.constant, min(self.budget_s, SCREEN_S), num=POLY, screen=False)
                with contextlib.suppress(Unscreened, *TOLERATED):
                    probe._run()
                    self._clean = not (probe._incomplete or probe._constraints)
                    self._screen_values = probe._values if self._clean else {}
        return self._clean

    def fixed(self, tensor: gs.Tensor) -> bool:
        """Whether a small integer tensor (a shape vector) is known to hold numbers only, the same at every size,
        without the full pass where the screen settled the graph: a number the screen reached by steps that sympy
        takes as well is sympy's too (`Poly.derived`). False where that is not known (ask `value`)."""
        if self._done or not (self._clean or self.screened()):
            return self._done and all(v is not None and v.is_Integer for v in self.value(tensor) or (None,))
        value = self._screen_values.get(id(tensor))
        return value is not None and all(v is not None and v.is_number and not v.derived for v in value)

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
            with contextlib.suppress(*self.num.tolerated):
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
                dims.append(self.num.integer(int(dim)))
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
                self._shapes[id(tensor)] = tuple(self.num.integer(int(d)) for d in const.shape)
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
            self._values[id(tensor)] = tuple(self.num.integer(int(v)) for v in value.reshape(-1))

    def _in_value(self, node: gs.Node, k: int) -> tuple | None:
        if k >= len(node.inputs) or not _present(node.inputs[k]):
            return None
        self._in_shape(node, k)
        return self._values.get(id(node.inputs[k]))

    def _set(self, node: gs.Node, shape: Shape | None, value: tuple | None = None, k: int = 0) -> None:
        out = node.outputs[k]
        if shape is not None:
            shape = tuple(None if d is None or self.num.too_big(d) else self.simplify(d) for d in shape)
        self._shapes[id(out)] = shape
        if value is not None and len(value) <= MAX_VECTOR:
            self._values[id(out)] = tuple(None if v is None or self.num.too_big(v) else self.simplify(self.num.expr(v))
                                          for v in value)

    def _require(self, kind: str, node: gs.Node, left: Expr | None, right: Expr | None, detail: str = "") -> None:
        if left is None or right is None:
            return
        if not self.num.same(left, right):
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


