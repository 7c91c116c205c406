"""The hypothesis space of a value a trace baked, and the graph's constraints that narrow it.

A number in a shape vector, a slice end or a pad amount that equals some function of the sizes at export may be
any expression of the upstream dims that had that value there. The family searched (`size_hypotheses`), for each
upstream dim d at its export size and every divisor k in `DIVISORS`:

    c (the model's own constant)   d   d + c   k*d   d // k   ceil(d / k)   d1*d2   min(d, c)
    and for a pad amount: (k - d mod k) mod k   k - d mod k

A constraint of the graph (`Requirement`: an element count, two dims a broadcast, MatMul or Concat must keep
equal, a chunk count that must be whole) is written with a hole (`hole()`, or several) where the baked value sits.
A hypothesis survives when, put in the hole, the requirement holds at the export size and at sizes far beyond it
(at least `BEYOND` of the sampled ones: a floor may make a graph run on one residue class only, as PyTorch would;
a pad that rounds up to a multiple must make every size run).
Two survivors that agree wherever either runs are the same fix (`T // 3` and `ceil(T / 3)` in a reshape that
needs T to be a multiple of 3). A dim the exporter declared dynamic on an output that a hypothesis would keep
fixed kills it (`Varies`).

A fix is SAFE only when exactly one hypothesis survives. Several survivors are listed by the finding, cheapest
first (`Hypothesis.cost`): `--unsafe-fixes` applies the first.

Structured constants have their own space (graphfix.analysis.bands): a two-valued matrix is every band
`lo <= j - i <= hi` that reproduces it at the export size.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from graphfix.core.lazy import sympy  # imported on first use: see graphfix.core.lazy

DIVISORS = tuple(range(2, 17))
BEYOND = 2  # sampled sizes past the export size at which a survivor must let the graph run
MAX_JOINT = 4096  # hypothesis combinations tried for requirements with several holes


@functools.cache
def hole() -> sympy.Symbol:
    """The symbol that stands for a baked value in a requirement (made on first use: sympy loads lazily)."""
    return sympy.Symbol("baked", integer=True)


@dataclass(frozen=True)
class Hypothesis:
    """`expr` (over the dims' symbols) equals the baked value at export; `family` names its form."""

    expr: sympy.Expr
    family: str
    cost: int  # simpler first: the one `--unsafe-fixes` applies among several

    def __str__(self) -> str:
        return show(self.expr)


def show(expr: sympy.Expr) -> str:
    """Python-like text: `T // 2`, `ceil(T / 3)`, `(4 - T % 4) % 4`."""
    text = str(expr)
    for pattern, repl in ((r"floor\(([A-Za-z_]\w*)/(\d+)\)", r"\1 // \2"), (r"ceiling\(([A-Za-z_]\w*)/(\d+)\)",
                          r"ceil(\1 / \2)"), (r"Mod\((-?[\w*+ -]+), (\d+)\)", _mod), (r"Min\(", "min(")):
        text = re.sub(pattern, repl, text)
    return re.sub(r"\((\d+)\*([A-Za-z_]\w*)\) % (\d+)",
                  lambda m: f"({m[3]} - {m[2]} % {m[3]}) % {m[3]}" if int(m[1]) == int(m[3]) - 1 else m[0], text)


def _mod(match: re.Match) -> str:
    """`Mod(x, k)` as `x % k`, `x` in parentheses unless it is a name."""
    operand = match[1] if re.fullmatch(r"[A-Za-z_]\w*", match[1]) else f"({match[1]})"
    return f"{operand} % {match[2]}"


SIZE = frozenset({"d", "c", "d + c", "d - c", "k*d", "d // k", "ceil(d / k)", "d1*d2", "min(d, c)"})
# a pad amount may also round a length up to a multiple, or pad a whole k where it is one already (`k - d % k`)
PAD = SIZE | {"(k - d mod k) mod k", "k - d mod k"}


def size_hypotheses(value: int, export: Mapping[sympy.Symbol, int], divisors: Iterable[int] = DIVISORS,
                    families: frozenset[str] = SIZE) -> list[Hypothesis]:
    """Every expression of `families` over the dims in `export` (symbol -> export size) equal to `value` there,
    cheapest first. "c" is the value itself: a size of the model, not of the input. A shape entry or a slice end
    searches `SIZE`; a pad amount `PAD`."""
    found: dict[sympy.Expr, Hypothesis] = {}

    def add(expr, family: str, cost: int) -> None:
        expr = sympy.sympify(expr)
        if expr not in found and family in families:
            found[expr] = Hypothesis(expr, family, cost)

    value = int(value)
    for d, v in sorted(export.items(), key=lambda item: str(item[0])):
        if v == value:
            add(d, "d", 0)
    add(sympy.Integer(value), "c", 1)
    for d, v in sorted(export.items(), key=lambda item: str(item[0])):
        if v != value:
            add(d + (value - v), "d + c" if value > v else "d - c", 2)
        for k in divisors:
            if k * v == value:
                add(k * d, "k*d", 2)
            if v // k == value:
                add(sympy.floor(d / k), "d // k", 3)
            if -(-v // k) == value:
                add(sympy.ceiling(d / k), "ceil(d / k)", 4)
            if (k - v % k) % k == value and value:
                add(sympy.Mod(-d, k), "(k - d mod k) mod k", 5)
            if k - v % k == value:
                add(k - sympy.Mod(d, k), "k - d mod k", 6)
        if v > value > 1:
            add(sympy.Min(d, value), "min(d, c)", 4)
    for (d1, v1), (d2, v2) in itertools.combinations(sorted(export.items(), key=lambda i: str(i[0])), 2):
        if v1 * v2 == value:
            add(d1 * d2, "d1*d2", 3)
    return sorted(found.values(), key=lambda h: h.cost)


# --- requirements -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Requirement:
    """`left == right` must hold where the graph runs; holes (symbols in `holes`) stand for baked values. A floor
    may let the graph run on a residue class only (`reshape(B, int(T) // 3, 12)` needs T % 3 == 0, as PyTorch does)."""

    left: sympy.Expr
    right: sympy.Expr
    why: str
    holes: tuple[sympy.Symbol, ...] = field(default_factory=lambda: (hole(),))
    everywhere: bool = False  # True: it must hold at every size (no residue class)

    def test(self) -> Callable[[Mapping], bool | None]:
        """True/False at a binding (sizes and holes' values), None where undefined."""
        left, right = evaluator(self.left), evaluator(self.right)
        return lambda binding: left(binding) == right(binding)

    def symbols(self) -> set:
        return self.left.free_symbols | self.right.free_symbols


@dataclass(frozen=True)
class Multiple:
    """`length` must be a whole multiple of `chunk` at every size: a pad rounding up to a multiple exists to make
    every length run, so a hypothesis that runs on some lengths only is not one."""

    length: sympy.Expr
    chunk: int
    why: str
    holes: tuple[sympy.Symbol, ...] = field(default_factory=lambda: (hole(),))
    everywhere: bool = True

    def test(self) -> Callable[[Mapping], bool | None]:
        length = evaluator(self.length)
        return lambda binding: length(binding) % self.chunk == 0

    def symbols(self) -> set:
        return set(self.length.free_symbols)


@dataclass(frozen=True)
class Varies:
    """The hole's value must change with the sizes: an output dim the exporter declared dynamic follows it."""

    why: str
    hole: sympy.Symbol = field(default_factory=lambda: hole())
    everywhere: bool = False

    def symbols(self) -> set:
        return set()


@dataclass
class Determination:
    """What survives: `survivors` (one per distinct behaviour, cheapest first) and why each other died."""

    survivors: list[dict[sympy.Symbol, Hypothesis]]
    killed: list[tuple[dict[sympy.Symbol, Hypothesis], str]] = field(default_factory=list)

    @property
    def determined(self) -> bool:
        return len(self.survivors) == 1

    def chosen(self, symbol: sympy.Symbol | None = None) -> Hypothesis | None:
        """The hole's hypothesis in the cheapest survivor (the one `--unsafe-fixes` applies)."""
        return self.survivors[0][symbol or hole()] if self.survivors else None

    def alternatives(self, symbol: sympy.Symbol | None = None) -> list[Hypothesis]:
        """The hole's distinct hypotheses over all survivors, cheapest first."""
        symbol = symbol or hole()
        return list({str(s[symbol]): s[symbol] for s in self.survivors}.values())

    def describe(self, symbol: sympy.Symbol | None = None) -> str:
        return " or ".join(str(h) for h in self.alternatives(symbol)) or "none"


def determine(space: Mapping[sympy.Symbol, Sequence[Hypothesis]], requirements: Sequence,
              export: Mapping[sympy.Symbol, int], others: Mapping[sympy.Symbol, Sequence[int]] | None = None,
              ) -> Determination:
    """The combinations of hypotheses (one per hole of `space`) that every requirement lets run at the export size
    and at sizes far beyond it. `export` sizes the dims the hypotheses use; `others` gives sample values for the
    requirements' other symbols (a batch whose export size is unknown), default (2, 3, 5)."""
    holes = list(space)
    bindings = _bindings(requirements, space, export, others or {})
    tests = [(r, r.test()) for r in requirements if not isinstance(r, Varies)]
    survivors: list[tuple[dict, tuple]] = []
    killed = []
    for combo in itertools.islice(itertools.product(*(space[h] for h in holes)), MAX_JOINT):
        fill = dict(zip(holes, combo, strict=True))
        stays = next((r for r in requirements if isinstance(r, Varies) and _fixed(fill[r.hole], bindings)), None)
        verdict, behaviour = (f"{stays.why}, it would stay fixed", ()) if stays else _judge(tests, fill, bindings)
        if verdict is not None:
            killed.append((fill, verdict))
            continue
        same = next((s for s in survivors if s[1] == behaviour), None)
        if same is None:
            survivors.append((fill, behaviour))
        elif _cost(fill) < _cost(same[0]):
            survivors[survivors.index(same)] = (fill, behaviour)
    survivors.sort(key=lambda s: _cost(s[0]))
    return Determination([s[0] for s in survivors], killed)


def _fixed(hypothesis: Hypothesis, bindings) -> bool:
    """The hypothesis keeps one value at the export size and far past it (`min(T, 2)` as much as `2`)."""
    value = evaluator(hypothesis.expr)
    try:
        return len({value(sizes) for where, sizes in bindings if where != "near"}) == 1
    except (ZeroDivisionError, KeyError, TypeError, ValueError):
        return False


def _cost(fill: Mapping) -> int:
    return sum(h.cost for h in fill.values())


def _bindings(requirements, space, export, others) -> list[tuple[str, dict]]:
    """(where, sizes): the export size, sizes just past it and far past it for each dim alone, the requirements'
    other symbols at a few values each."""
    dims = {s for s in export}
    free = set().union(*(r.symbols() for r in requirements)) - set(space) - dims
    rest = sorted(free, key=str)
    combos = list(itertools.product(*[others.get(s, (2, 3, 5)) for s in rest]))
    base = {s: int(v) for s, v in export.items()}
    sized = [("export", dict(base))]
    for s, v in base.items():
        far = 8 * v + 16
        sized += [("near", {**base, s: v + i}) for i in range(1, 13)]
        sized += [("far", {**base, s: size}) for size in range(far, far + 2 * max(DIVISORS))]
    return [(where, {**sizes, **dict(zip(rest, combo, strict=True))}) for where, sizes in sized for combo in combos]


def _judge(tests, fill, bindings) -> tuple[str | None, tuple]:
    """(why it dies, or None; its behaviour: where the graph runs past the export size, and the holes' values
    there)."""
    holes = {h: evaluator(hyp.expr) for h, hyp in fill.items()}
    runs, values, failures, far = [], [], [], 0
    for where, sizes in bindings:
        try:
            binding = {**sizes, **{h: f(sizes) for h, f in holes.items()}}
            failed = [r for r, t in tests if not t(binding)]
        except (ZeroDivisionError, KeyError, TypeError, ValueError):
            return "it cannot be evaluated", ()
        if where == "export" and failed:
            return f"{failed[0].why} fails at the export size", ()
        if failed and any(r.everywhere for r in failed):
            return f"{failed[0].why} fails at {_show_binding(sizes)}", ()
        runs.append(not failed)
        failures += failed
        far += where == "far" and not failed
        values.append(tuple(binding[h] for h in holes) if not failed else None)
    if far < BEYOND and any(w == "far" for w, _ in bindings):
        why = failures[0].why if failures else "the graph"
        return f"{why} holds near the export size only", ()
    return None, (tuple(runs), tuple(values))


def _show_binding(sizes: Mapping) -> str:
    return ", ".join(f"{s}={v}" for s, v in sorted(sizes.items(), key=lambda i: str(i[0])))


def equivalent(a: sympy.Expr, b: sympy.Expr, sizes: Iterable[int] = range(1, 65)) -> bool:
    """`a` and `b` give the same value at every sampled size (each symbol in turn, the others at 2 and 3): one
    hypothesis written two ways (`Mod(4 - Mod(T, 4), 4)` and `Mod(-T, 4)`)."""
    symbols = sorted(a.free_symbols | b.free_symbols, key=str)
    left, right = evaluator(a), evaluator(b)
    for moving in symbols or [None]:
        for rest in (2, 3):
            for size in sizes:
                binding = {s: (size if s is moving else rest) for s in symbols}
                try:
                    if left(binding) != right(binding):
                        return False
                except (ZeroDivisionError, KeyError, TypeError, ValueError):
                    return False
    return True


# --- exact evaluation ---------------------------------------------------------------------------------------------
_CACHE: dict = {}


def evaluator(expr: sympy.Expr) -> Callable[[Mapping], Fraction]:
    """`expr` as a function of a binding (symbol -> int), in exact rational arithmetic (floats would floor
    `T/3` at 9 to 2); sympy's own substitution is a hundred times slower."""
    key = expr
    if key not in _CACHE:
        _CACHE[key] = _compile(sympy.sympify(expr))
    return _CACHE[key]


def _compile(e):
    if e.is_Integer:
        v = int(e)
        return lambda b: v
    if e.is_Rational:
        v = Fraction(int(e.p), int(e.q))
        return lambda b: v
    if e.is_Symbol:
        return lambda b: b[e]
    args = [_compile(a) for a in e.args]
    if e.is_Add:
        return lambda b: sum(a(b) for a in args)
    if e.is_Mul:
        return lambda b: math.prod(a(b) for a in args)
    if e.is_Pow and e.exp.is_Integer:
        base, exp = args[0], int(e.exp)
        return lambda b: Fraction(base(b)) ** exp
    if isinstance(e, sympy.floor):
        return lambda b: math.floor(args[0](b))
    if isinstance(e, sympy.ceiling):
        return lambda b: math.ceil(args[0](b))
    if isinstance(e, sympy.Mod):
        return lambda b: args[0](b) % args[1](b)
    if isinstance(e, sympy.Min):
        return lambda b: min(a(b) for a in args)
    if isinstance(e, sympy.Max):
        return lambda b: max(a(b) for a in args)
    raise ValueError(f"cannot evaluate {e.func.__name__}")
