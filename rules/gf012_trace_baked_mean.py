"""GF012 trace-baked-mean."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.analysis.context import RuleContext
from graphfix.analysis.export_sizes import export_sizes
from graphfix.analysis.sizes.ops import is_table
from graphfix.analysis.sums_near import reduced, sum_near
from graphfix.core.rule import Finding, Rejection, Rule, Severity

TOTALS = frozenset({"ReduceSum", "Einsum", "MatMul", "Gemm", "CumSum"})  # a sum (not a mean, a norm or a softmax's): a
# product of two data operands sums over its contracted axis (`h.transpose(1, 2) @ h / int(T)`), a cumulative sum's
# last position is the sum (`h.cumsum(1)[:, -1]`; its other positions are positions)
HINT = ("Keep the length a tensor while tracing: `h.mean(1)`, or `h.sum(1) / h.shape[1]` (not `int(h.shape[1])` or "
        "`float(T)`), or divide by the lengths of a padded batch; then re-export. If the number is the model's own "
        "constant, the warning can be left (`--skip GF012`).")


class TraceBakedMean(Rule):
    """A sum over an axis whose length varies, divided by a whole number: a mean whose length was baked.

    ## What it does
    Finds a Div by a constant that is a whole number from 3 on or its square root (one element, or a vector of
    equal ones; or a Mul by its inverse) that scales a sum over an axis the graph leaves dynamic: a ReduceSum, an
    Einsum's sum, a Gram matrix's product (`h.transpose(1, 2) @ h`) or a cumulative sum's last position
    (`h.cumsum(1)[:, -1]`) found as the echo check finds sums
    (`graphfix.analysis.sums_near`: up through arithmetic, layout ops, a weight's product, an elementwise map and
    here a sum again over a static axis; down through layout ops and arithmetic, `(h / T).sum(1)`, but not past an
    elementwise map: the sum of a softmax written by hand, `exp(s / 4) / sum`, is no mean).
    `h.sum(1) / int(h.shape[1])` traced at 399 frames divides by 399.0 at every length (helper 119:
    transformers' Wav2Vec2 then that mean, 50 % off at other lengths, with no finding). The shapes are onnx's,
    and onnxruntime's symbolic inference where onnx leaves a dim unknown. A sum of counts (an integer ReduceSum: a
    mask's frames cast and divided by a hop, transformers' VibeVoice) is none. A warning: the number may be the
    model's own (sum pooling scaled by 1/8, `/ 4`, helper 123), which the graph does not tell from a length; an
    error where the graph or `--trace-shape` says the axis was that long at export.

    ## Why it breaks deployment
    The model runs at every length and returns values scaled for the export length: nothing fails, and `repair`
    compares the model with itself. A number baked beside a fix (a Reshape GF004 rebuilds) is read by the fix's
    echo check instead, which makes the fix unsafe.

    ## Example
    ```python
    return h.sum(1) / int(h.shape[1])   # traced at T = 399: Div(ReduceSum(h, 1), 399.0)
    return h.mean(1)                     # a ReduceMean, right at every length
    ```

    ## Fix safety
    Not repaired: whether the number is the length at export or the model's own is not in the graph. `repair`
    writes nothing while an error is left (the axis' export length known, exit 1); past a warning it writes the
    model as it came, the warning shown.
    """

    code = "GF012"
    name = "trace-baked-mean"
    severity = Severity.WARNING

    def detect(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        for node in ctx.graph.nodes:
            if node.op not in ("Div", "Mul") or len(node.inputs) != 2:
                continue
            divisor = _whole(ctx, node)
            if divisor is None:
                continue
            (number, root), const = divisor
            near = sum_near(node, const, None, ctx.shape_filled, ctx.constant_value, past_sums=True)
            if near is None or not near.summed or near.op is None or near.op.op not in TOTALS or \
                    (near.mapped and not near.taken):
                continue  # a sum taken past a nonlinearity of the scaled value: a softmax's, by hand (helper 125)
            summed, lengths = near.op, _lengths(ctx, near.op)
            if not lengths:
                yield self.reject(f"{node.op} '{node.name}' scales the sum '{summed.name}' by a whole number or "
                                  "its root, over static axes only, or over counts", nodes=[node.name])
                continue
            dim, exported = lengths[0], export_sizes(ctx, ctx.evaluator)
            baked = exported.values.get(dim) == number
            spelled = f"sqrt({number})" if root else f"{number}"
            yield self.finding(
                f"{node.op} '{node.name}' divides the sum '{summed.name}' over an axis whose length the graph "
                f"leaves dynamic ({dim}) by {spelled}: "
                + (f"{dim} was {number} at export ({exported.explain(dim)}), so the mean's length was baked while "
                   "tracing (`h.sum(1) / int(h.shape[1])`): wrong at every other length" if baked else
                   f"a mean whose length was baked while tracing (`h.sum(1) / int(h.shape[1])` at {number}) reads "
                   "the same, and is wrong at every other length"),
                nodes=[node.name, summed.name], hint=HINT, severity=Severity.ERROR if baked else Severity.WARNING)


def _whole(ctx: RuleContext, node: gs.Node) -> tuple[tuple[int, bool], gs.Tensor] | None:
    """The whole number from 3 on that the node divides by (a Div's divisor, or a Mul's factor's inverse; a vector
    of equal entries as one), whether it divides by its square root (`/ math.sqrt(T)`), and the constant."""
    const = node.inputs[1] if node.op == "Div" else next((t for t in node.inputs if is_table(t)), None)
    value = ctx.constant_value(const) if const is not None and is_table(const) else None
    if value is None or value.size == 0 or value.dtype.kind != "f" or np.ptp(value) != 0:
        return None
    number = float(value.reshape(-1)[0])
    if not math.isfinite(number) or number == 0:
        return None
    divisor = number if node.op == "Div" else 1 / number
    tolerance = 1e-3 if value.dtype.itemsize == 2 else 1e-6
    if math.isclose(divisor, round(divisor), rel_tol=tolerance):  # a whole number, not a root (2 is no sqrt(4))
        return ((round(divisor), False), const) if round(divisor) >= 3 else None
    square = round(divisor * divisor)
    return ((square, True), const) if square >= 3 and math.isclose(divisor * divisor, square, rel_tol=tolerance) \
        else None


def _lengths(ctx: RuleContext, summed: gs.Node) -> list[str]:
    """The dynamic dims the sum sums over (onnx's shapes, filled from onnxruntime's symbolic inference where onnx
    leaves one unknown); none over counts (an integer sum: a mask's frames, which a hop or a stride divides)."""
    data = summed.inputs[0]
    if data.dtype is not None and np.dtype(data.dtype).kind in "iub":
        return []
    dims = ctx.shape_filled(data)
    return [] if dims is None else [d for d in reduced(summed, dims, ctx.constant_value) if isinstance(d, str) and d]
