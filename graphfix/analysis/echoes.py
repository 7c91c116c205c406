"""Echoes of a baked size: float constants of the graph that equal a simple function of it.

`T = int(x.shape[1])` used twice, in a head split (`reshape(B, T, H, D)`, whose element count pins the entry:
GF004 rebuilds it) and in a mean (`h.sum(1) / T`, a Div by the float 12.0 that runs at every length). Rebuilding
the Reshape lets the model run at other lengths, where the Div still divides by the export length; the original
failed there, so no reference shows it, and the repair was written with exit 0 (helper 54). The graph cannot
say whether such a constant is the same Python int or the model's own number, so a fix that makes a size follow
the input is doubted where one is read; exported at a length no constant of the model echoes (13 rather than
16), the doubt goes away.

Two sets of forms, so that a model's own numbers are not taken for sizes where nothing points at a size:
- anywhere: n, 1/n, sqrt(n), 1/sqrt(n) (a mean, a `T ** -0.5` scale), log(n), log2(n) and their inverses
  (`h * math.log(T)`, red team 113; not at 10, whose ln is every `log10`'s constant);
- where the value it meets was summed over an axis of that size, or is then (`h.sum(1) / (T - 1)`,
  `h.sum((1, 2)) / (T * D)`), or holds positions along it (a Range or CumSum: `arange(T) / (T - 1)`, CoordConv's
  `arange(T) * (2 / (T - 1)) - 1`, helper 62): also n + k for k from -5 to 5, n / (n + k) and its inverse (an
  unbiased mean), 2n, n times a dim of a summed value, log(n + k), sqrt(n + k) (`Linear(h.sum(1)) /
  sqrt(T - 1)`, red team 113), log2(n + k) and 2 pi / (n + k) for k from -1
  to 1 (a period: `sin(arange(L) * 2 pi / T)`, helper 76), and their inverses, 2 / (n + k), (n + k) / 2 for k
  from -1 to 1, n / m and m / n for m from 3 to 8, 2 / n, n ** 2, 2 sqrt(n) and their inverses (`pos - (T - 1) /
  2`, `pos / (T / 5)`, helpers 140 to 142), and n ** 0.25
  and its inverse (only there: the TorchScript exporter scales SDPA's queries and keys by head_dim ** -0.25, and
  BERT traced at 64 tokens of 64-wide heads was refused, helper 65). `1 / sqrt(64)` is 1/(n - 1) at n = 9
  (helper 56), but it meets the queries, which nothing summed over the length.
Beyond these forms, any other number that scales (Mul, Div) a sum or mean over an axis of the size, or the data
so summed, or a maximum or minimum once taken (`h.sum(1) * T / (T + 1)`, `h.amax(1) / (T - 1)`,
`h.sum(1) / log2(T)`, helper 65): a model scales such a sum by its own number rarely, and no list of forms holds
every function of the size. The sum is looked for within 8 ops, through every operand of arithmetic and Concat
(a 3-D Linear's `Add(bias, MatMul)`, pooled statistics concatenated), and through a linear map (a MatMul or Gemm
with constant weights), past which only the forms are read (`Linear(h.sum(1)) / (T - 5)`; a classifier's own
temperature, `Linear(h.mean(1)) / 0.07`, helper 75), as past an elementwise nonlinearity (`relu(h.sum(1)) /
(T - 1)`, `log(exp(h).sum(1)) - log(T)`) and from a softmax over the size (`softmax(h, 1) * (T - 1)`, helper 76).
A MatMul of two data operands sums over an axis as an Einsum does, where that axis holds the size itself (a
covariance `hc.transpose(1, 2) @ hc / (T - 1)`, VICReg's `z.T @ z / (N - 1)`, red team 113), unless a softmax
normalizes its product (attention's scores sum over features) or weights its first operand (`attn @ v` averages
the values). Any number also doubts where it scales what a softmax over an axis of the size (static past the
baked Reshape, or named and not as a batch) normalizes: a temperature of the length (attention pooling's
`logits / sqrt(T - 1)`, log-length attention's `log(T) / log(512)`, red team 113), also where a bias or ALiBi's
distances are added to the scores after it or it scales the queries before their product with the keys (helper
115; a MatMul or an Einsum, helper 120), where a model's own scale of scores is a plain form of a width it meets
(`1 / sqrt(d)`) or a head's 1/sqrt(k) or k ** -0.25 for a whole k no form of the size nor a factor of a
product rebuilt (nn.MultiheadAttention's `8 ** -0.5`, Gemma-2's `224 ** -0.5`), and a mask's fill (a magnitude
from FILL on) is none; and where it scales the softmax's weights, which sum to one (`softmax(h, 1) * (T / 2)`),
or is added to a log of a sum or a log-softmax (log-mean-exp's `logsumexp(h, 1) - 0.5 * log(T)`, helper 115; not
a guard below EPSILON). Where the export length is unknown (GF003's fix), k, 1/k, sqrt(k) and 1/sqrt(k) for a
whole k above 2 are read where they scale a sum, past a linear map too, or positions from a Range (`arange(T) /
float(T)`, helper 117).
Not a scale of the data before a maximum: it scales the maximum alone (whisper's log-mel divides by ln 10,
torchaudio's AmplitudeToDB multiplies by 10, both before a maximum over the length, helper 69; no number is exempt
for what it is: 20 / T is 0.1 at 200, helper 70).
Positions are scaled by models' own numbers (a rotary table's linear scaling, DETR's 2 pi over a mask's
cumulative sum, helper 75), so only the forms are read there.
Only sizes above 2, and no form or scale of a sum that gives 0, 0.5, 1, 2 or -1 (every GELU's and every mean of
two's own numbers); not a constant that is a plain form of a static width it meets (`_widths_near`: 0.25
dividing scores of 16-wide heads is their 1/sqrt(16), though it is 256 ** -0.25 for a length of 256).
A comparison, a clamp, a minimum or a maximum reads a constant as arithmetic does (`arange(T).float() < T / 2`,
helper 142). Constants of one element are read, in the graph, its subgraphs and its local functions, and a vector of one
number repeated where it scales a sum once taken (`h.sum(1) * torch.full((D,), 1 / (T - 5))`, red team 41), not
data before a sum: a LayerScale at its initial value, `1e-6 * ones(D)`, is one (helper 70); a float16 constant is
compared at float16's precision. An Einsum sums over the letters of its first operand that its output drops.

What a constant meets (a sum, a softmax, positions) is found by graphfix.analysis.sums_near. The same int baked as
an integer, where it cuts, picks or meets integers: graphfix.analysis.int_echoes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.int_echoes import SHIFTS, int_echo_reads, int_echoes, plus
from graphfix.analysis.length_axes import lengths
from graphfix.analysis.position_echoes import position_echoes
from graphfix.analysis.sizes.ops import is_table, weight_dims
from graphfix.analysis.sums_near import normalized, sum_near

ARITHMETIC = frozenset({"Add", "Sub", "Mul", "Div", "Pow",  # and a comparison or a clamp of positions (helper 142:
                        "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "Clip", "Min", "Max"})
# `arange(T).float() < T / 2`, `.clamp(max=T / 4)`)
SCALES = frozenset({"Mul", "Div"})
SHIFTS_OF_LOGS = frozenset({"Add", "Sub"})  # a number added to a log of a sum scales the sum
EPSILON = 1e-3  # a shift of a log below this is a guard against log(0) (`logsumexp(h, 1) + 1e-6`, helper 120)
FILL = 1e3  # a scale from this magnitude on fills a mask (`(1 - mask) * -10000`), whatever computed the mask
COMMON = (0.0, 0.5, 1.0, 2.0, -1.0)  # what a function of a small size gives, and what models hold for their own reasons
PLAIN = (("{}", lambda n: n), ("1/{}", lambda n: 1 / n), ("sqrt({})", math.sqrt), ("1/sqrt({})", lambda n: n ** -0.5))
LOGS = tuple((text, lambda n, of=of: of(n) if n != 10 else math.inf) for text, of in (
    ("log({})", math.log), ("1/log({})", lambda n: 1 / math.log(n)), ("log2({})", math.log2),
    ("1/log2({})", lambda n: 1 / math.log2(n))))  # `h * math.log(T)`, `h / math.log2(T)` (red team 113); not at 10,
# where ln 10 is every `log10`'s own constant (helper 115: a dB front end traced at 10 frames was refused)
ROOTS = (("{} ** 0.25", lambda n: n ** 0.25), ("{} ** -0.25", lambda n: n ** -0.25))  # SDPA's scale of q and k


def _twice(k: int) -> str:
    """`plus(k)` for a form that names the size twice (`{0}/({0} - 1)`)."""
    return plus(k).format("{0}")


def _over(top: float, of: Callable[[int], float]) -> Callable[[int], float]:
    """`top / of(n)`, infinite (matching no constant) where `of(n)` is 0."""
    return lambda n: top / of(n) if of(n) else math.inf


def _root(k: int) -> Callable[[int], float]:
    return lambda n: math.sqrt(n + k) if n + k >= 0 else math.inf


def _log(k: int, base: float = math.e) -> Callable[[int], float]:
    return lambda n: math.log(n + k, base) if n + k > 0 else math.inf


SUMMED = (*(form for k in SHIFTS for form in ((plus(k), lambda n, k=k: n + k),
                                               (f"1/({plus(k)})", _over(1, lambda n, k=k: n + k)),
                                               (f"2/({plus(k)})", _over(2, lambda n, k=k: n + k)))),
          *(form for k in SHIFTS for form in ((f"{{0}}/({_twice(k)})", _over(1, lambda n, k=k: (n + k) / n)),
                                               (f"({_twice(k)})/{{0}}", lambda n, k=k: (n + k) / n))),
          ("2*{}", lambda n: 2 * n), ("1/(2*{})", lambda n: 1 / (2 * n)),
          *(form for k in (0, *SHIFTS) for form in ((f"log({plus(k)})", _log(k)),
                                                     (f"1/log({plus(k)})", _over(1, _log(k))))),
          *(form for k in (0, -1, 1) for form in (  # a base-2 log, and a period (`sin(arange(L) * 2 pi / T)`)
              (f"log2({plus(k)})", _log(k, 2)), (f"1/log2({plus(k)})", _over(1, _log(k, 2))),
              (f"2pi/({plus(k)})", _over(2 * math.pi, lambda n, k=k: n + k)),
              (f"pi/({plus(k)})", _over(math.pi, lambda n, k=k: n + k)))),
          *(form for k in (0, -1, 1) for form in (  # a centre or a half: `pos - (T - 1) / 2`, `pos / (T // 2)`
              (f"({plus(k)})/2", lambda n, k=k: (n + k) / 2),)),  # (helper 140)
          *(form for m in range(3, 9) for form in (  # a part and its inverse: `pos / (T / 4)`, `pos * (2.0 / T)`
              (f"{{}}/{m}", lambda n, m=m: n / m), (f"{m}/{{}}", lambda n, m=m: m / n))),  # (helpers 141, 142)
          ("2/{}", lambda n: 2 / n), ("{}**2", lambda n: n * n), ("1/{}**2", lambda n: 1 / (n * n)),
          *(form for k in SHIFTS for form in ((f"sqrt({plus(k)})", _root(k)),  # named after the simpler forms:
                                               (f"1/sqrt({plus(k)})", _over(1, _root(k))))),  # 3 is 12/4
          ("2*sqrt({})", lambda n: 2 * math.sqrt(n)), ("1/(2*sqrt({}))", lambda n: 0.5 / math.sqrt(n)),
          *ROOTS)
REL_TOL = {np.dtype(np.float16): 2e-3, np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
HOPS = 6  # ops walked from the constant's node to the widths it meets


def echoes(graph: gs.Graph, sizes: Iterable[int], constant_value: Callable[[gs.Tensor], np.ndarray | None],
           shape: Callable[[gs.Tensor], list | None], fixed: Callable[[gs.Node], bool] = lambda node: False,
           fold: Callable[[gs.Tensor], np.ndarray | None] | None = None, products: Iterable[int] = (),
           unknown: bool = False) -> list[str]:
    """For each one-element constant that equals a form of one of `sizes` (the sizes a fix makes follow the
    input) where the graph reads it as a size, a line naming it. `constant_value` and `shape` are the rule
    context's. On the nodes `fixed` names, an integer equal to one of `sizes` is the constant the fix rebuilds
    (a slice end), not an echo; their other integers are (`x[:, T // 2 : T]` keeps its start at 3). `fold` (the
    context's evaluator) gives the values of tensors computed from constants only, for the vectors read whole (a
    Pad's amounts, a shape's entries). `products`: those of `sizes` that are products of several sizes, whose
    factors are baked too (graphfix.analysis.int_echoes). `unknown`: a length the fix lets the model run at has
    an export size the graph does not tell (GF003's broadcast, which failed at every size): any number that scales
    a sum over an axis the graph leaves symbolic is read too (`h.sum(1) / float(h.shape[1])`, red team 116)."""
    wanted = sorted({n for n in sizes if isinstance(n, int) and n > 2})
    if not wanted and not unknown:
        return []
    nodes, widths = list(_nodes(graph)), weight_dims(graph)
    return [*_float_echoes(nodes, [*wanted, *[None] * unknown], constant_value, shape, frozenset(products)),
            *int_echoes(nodes, wanted, constant_value, shape, fixed, lengths(wanted, widths), fold, widths,
                        frozenset(products)),
            *position_echoes(nodes, wanted, constant_value, fixed)]


def index_echoes(graph: gs.Graph, sizes: Iterable[int], constant_value, shape, fold=None) -> list[tuple[gs.Node, str]]:
    """The integer echoes of `sizes` alone (`echoes`' cuts, indices, values, kernels, pads, output sizes), each with
    the node that reads it, along axes the graph leaves dynamic only (no fix made a static axis a length: a
    Llama's rotary half-split of 128 head features at 128 tokens is no cut of them, helper 137) and in the plain
    forms only: where no fix asks, the export sizes the user gave are read for them (GF015)."""
    wanted = sorted({n for n in sizes if isinstance(n, int) and n > 2})
    if not wanted:
        return []
    nodes, widths = list(_nodes(graph)), weight_dims(graph)
    return list(int_echo_reads(nodes, wanted, constant_value, shape, lambda node: False, [], fold, widths,
                               plain=True))


SCALE_FORMS = tuple(form for k in (0, -1, 1) for form in (
    (plus(k), lambda n, k=k: n + k), (f"1/({plus(k)})" if k else "1/{}", _over(1, lambda n, k=k: n + k))))
# the size, one less or more, and their inverses: `arange(T) / int(T)`, `arange(T) / (int(T) - 1)` (linspace)


def scale_echoes(graph: gs.Graph, sizes: Iterable[int], constant_value, shape) -> list[tuple[gs.Node, str]]:
    """The scalars that scale positions along an axis the graph leaves dynamic (a Range or a CumSum of one) by a
    plain form of one of `sizes` (SCALE_FORMS; helper 133: `arange(T) / int(T)` positions, with the export size
    given, went out with exit 0), each with the node that reads it: the float echoes GF015 reads where no fix
    asks. Not past a linear map or a nonlinearity (a model scales what it maps by its own numbers), and no form
    that gives one of COMMON. A sum so scaled is GF012's (a mean whose length was baked)."""
    wanted = sorted({n for n in sizes if isinstance(n, int) and n > 2})
    found = []
    for node in (node for node in _nodes(graph) if wanted and node.op in SCALES):
        for tensor in node.inputs[1:] if node.op == "Div" else node.inputs:  # a divisor, or either factor
            value = constant_value(tensor) if is_table(tensor) else None
            if value is None or value.size != 1 or value.dtype not in REL_TOL:
                continue
            item, tolerance = float(value.reshape(-1)[0]), REL_TOL[value.dtype]
            form = next(((text.format(n), n) for n in wanted for text, of in SCALE_FORMS
                         if math.isclose(item, of(n), rel_tol=tolerance)
                         and not any(math.isclose(of(n), c) for c in COMMON)), None)
            near = sum_near(node, tensor, None, shape, constant_value) if form else None
            if near is None or near.summed or near.mapped or not _dynamic(near, shape):
                continue
            found.append((node, f"{node.op} '{node.name}' scales positions along a dynamic axis by {item:.6g}, "
                                f"which is {form[0]} for the size {form[1]}"))
    return found


def _dynamic(near, shape) -> bool:
    """The positions the constant meets run along an axis the graph leaves dynamic: their dims hold a symbol
    (sum_near with no size finds only those, but a Range of unknown shape too)."""
    dims = shape(near.op.outputs[0]) if near.op is not None else None
    return dims is not None and any(not isinstance(d, int) for d in dims)


def _float_echoes(nodes: list[gs.Node], wanted: list[int | None], constant_value, shape,
                  products: frozenset[int] = frozenset()) -> list[str]:
    """Float constants that arithmetic reads (the forms of the module's docstring); None in `wanted`, a length of
    unknown export size: only a scale of a sum over an axis the graph leaves symbolic."""
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
                found.extend(_uniform_scale(node, tensor, value, [n for n in wanted if n is not None], shape,
                                            constant_value))
                continue
            if any(math.isclose(item, of(d), rel_tol=tolerance) for d in _widthsnear(node, tensor, shape) - {*wanted}
                   for _, of in (*PLAIN, *ROOTS)):
                continue  # the scale of a width it meets: attention's 1/sqrt(16), SDPA's 32 ** -0.25 on q and k
            for n in wanted:
                if n is None:
                    if node.op in SCALES and _some_size(item, tolerance) \
                            and (near := sum_near(node, tensor, None, shape, constant_value)) is not None \
                            and (near.summed or near.ranged):
                        what = "a sum over" if near.summed else "positions along"
                        found.append(f"{node.op} '{node.name}' scales {what} an axis whose export length the "
                                     f"graph does not tell by {item:.6g}, which a mean or positions with that length "
                                     "baked (`h.sum(1) / float(T)`, `arange(T) / float(T)`) read the same")
                        break
                    continue
                near = sum_near(node, tensor, n, shape, constant_value)
                forms = [*PLAIN, *LOGS, *SUMMED, *_times_dims(near.dims)] if near is not None else [*PLAIN, *LOGS]
                form = next((text.format(n) for text, of in forms if not any(math.isclose(of(n), c) for c in COMMON)
                             and math.isclose(item, of(n), rel_tol=tolerance)), None)
                if form is not None:
                    found.append(f"{node.op} '{node.name}' reads {item:.6g}, which is {form} for the size {n}")
                    break
                if near is not None and near.summed and not near.mapped and node.op in SCALES \
                        and not any(math.isclose(item, c, rel_tol=tolerance) for c in COMMON):
                    found.append(f"{node.op} '{node.name}' scales a sum over an axis of the size {n} by {item:.6g}, "
                                 f"which a function of the size would read the same at {n}")
                    break
                if near is not None and near.logged and node.op in SHIFTS_OF_LOGS and abs(item) >= EPSILON \
                        and not any(math.isclose(item, c, rel_tol=tolerance) for c in COMMON):
                    found.append(f"{node.op} '{node.name}' shifts a log of a sum over an axis of the size {n} by "
                                 f"{item:.6g}, which scales the sum as a function of the size would at {n}")
                    break
                head = _a_heads_width(node, item, tolerance)
                own = head is not None and not any(math.isclose(item, of(n), rel_tol=tolerance) for _, of in SUMMED) \
                    and not (n in products and 2 < head < n and n % head == 0)  # `/ sqrt(H)` of a grid's H * W
                if node.op in SCALES and not any(math.isclose(item, c, rel_tol=tolerance) for c in COMMON) \
                        and not own and normalized(node, n, shape, biased=abs(item) < FILL, products=head is None):
                    found.append(f"{node.op} '{node.name}' scales what a softmax over an axis of the size {n} "
                                 f"normalizes by {item:.6g}, which a function of the size would read the same at {n}")
                    break
    return found


def _some_size(item: float, tolerance: float) -> bool:
    """Whether `item` is k, 1/k, sqrt(k) or 1/sqrt(k) for a whole k above 2, as a mean or a root of a length
    takes (`h.sum(1) / float(T)` reads 12; `/ (T - 1)` 1/11). A model's own gain (0.37, 1/sqrt(2)) is none
    (helper 117: a learnt gain after a masked sum was doubted)."""
    if item == 0 or not math.isfinite(item):
        return False
    for base in (abs(item), 1 / abs(item), item * item, 1 / (item * item)):
        k = round(base)
        if k > 2 and math.isclose(base, k, rel_tol=max(tolerance, 1e-9)):
            return True
    return False


def _a_heads_width(node: gs.Node, item: float, tolerance: float) -> int | None:
    """The whole k where the node scales by 1/sqrt(k) or k ** -0.25: the scale a head of k features gives its
    scores or its queries (Gemma-2's `query_pre_attn_scalar ** -0.5`, `q / sqrt(24)`, nn.MultiheadAttention's
    `q * 8 ** -0.5`, SDPA's `64 ** -0.25` on q and k under the TorchScript exporter, helper 120), whose width the
    graph may not show; None where it is none. On the queries such a scale is the head's whatever the size
    (MultiheadAttention's 0.25 is 1/(T - 1) at 5, SDPA's 64 ** -0.25 the length's at 64); on the scores only where
    k is no form of the size, nor a factor of a product rebuilt (a temperature of the length, `/ sqrt(T - 1)`;
    `/ sqrt(H)` over a grid's H * W tokens)."""
    scale = 1 / item if node.op == "Div" and item else item
    if scale <= 0:
        return None
    return next((round(base) for base in (scale ** -2, scale ** -4)
                 if round(base) >= 1 and math.isclose(base, round(base), rel_tol=max(tolerance, 1e-9))), None)


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
        near = sum_near(node, const, n, shape, constant_value)
        if near is not None and near.summed and near.taken and not near.mapped:
            return [f"{node.op} '{node.name}' scales a sum over an axis of the size {n} by {item:.6g} (in a vector of "
                    f"{value.size}), which a function of the size would read the same at {n}"]
    return []


def _widthsnear(node: gs.Node, const: gs.Tensor, shape) -> set[int]:
    """The static dims above 2 of the node's other operands and of the tensors they are computed from, within
    HOPS ops: a constant that is a plain form of one of them (`1 / sqrt(16)` dividing scores computed from queries
    of 16 features, `32 ** -0.25` scaling the queries themselves, as the TorchScript exporter writes SDPA) is the
    model's scale of that width, where it is also a form of the length (helper 65: transformers' BERT traced at
    256 tokens, 0.25 = 256 ** -0.25, and at 1024, was refused). Not a width equal to the size itself: downstream
    of the baked Reshape the length shows as that number (BERT traced at as many tokens as its head has features
    stays refused, as it was). Not a Shape's output nor past it: positions `arange(x.shape[1])` meet no width of x
    (helper 140: `arange(T) / (T // 2)` at 16 frames of 8 features was taken for a scale of the 8 features) and
    no rank (helper 141: `arange(T) / (T / 4)` at 12 frames, a scale of x's rank 3)."""
    widths: set[int] = set()
    frontier, seen = [t for t in node.inputs if t is not const], set()
    for _ in range(HOPS):
        step = []
        for tensor in frontier:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            if any(producer.op in ("Shape", "Size") for producer in tensor.inputs):
                continue  # a shape vector, as long as a rank
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


def _times_dims(dims: list[int]) -> list[tuple[str, Callable[[int], float]]]:
    """n times a dim of the summed value, and its inverse (`h.sum((1, 2)) / (T * D)`)."""
    return [form for d in sorted(set(dims)) for form in ((f"{{}}*{d}", lambda n, d=d: n * d),
                                                          (f"1/({{}}*{d})", lambda n, d=d: 1 / (n * d)))]
