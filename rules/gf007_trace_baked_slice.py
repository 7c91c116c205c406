"""GF007 trace-baked-slice."""

from __future__ import annotations

import re
from collections.abc import Iterator

from graphfix.analysis.context import RuleContext
from graphfix.analysis.edits import loosened, rebuilt_entries, size_expr
from graphfix.analysis.export_sizes import export_facts
from graphfix.analysis.sizes import baked_slices, sizes_if
from graphfix.analysis.sizes.arith import same
from graphfix.analysis.sizes.cuts import ExportLengthCut, constant_cuts, export_length_cuts
from graphfix.core.lazy import hypotheses, sympy  # imported on first use: see graphfix.core.lazy
from graphfix.core.rule import FailureSite, Finding, Fix, Rejection, Rule, Safety, Severity

HINT = ("A slice bound went through Python while tracing (`int(x.shape[i]) - 1`, `.item()`): index with the traced "
        "size itself or a negative bound (`x[:, :-1]`).")
EXPORT_LENGTH_HINT = ("Keep the length a tensor while tracing (`x[:, :n]` with `n` a tensor, not a Python int), or "
                      "mask instead of slicing (`(x * mask).sum(1) / mask.sum(1)`); if the cut is the model's own, "
                      "export at a length other than the cut.")


class TraceBakedSlice(Rule):
    """Slice ends computed in Python from a traced size, frozen at the value they had at export.

    ## What it does
    Finds Slices whose constant end makes a shape constraint downstream hold at one size only: the size analysis
    gives the sliced length as `Min(T, c)`, and where that length must equal an expression of the sizes that the
    Min's `T` side can never equal (`T - 1` from a neighbouring `x[:, 1:]`), it is solved on the constant side for
    the export-time size (T = c + 1). The end is then the solved expression, rebuilt from Shape ops.

    Also finds Slices that cut a dynamic length from 0 to a constant end equal to that length at export
    (graphfix.analysis.sizes.cuts), as `--trace-shape` or a constraint that holds at one size only says: they cut
    nothing at the export size, so no constraint breaks and no probe fails. Where nothing says the export length,
    such a cut is an info that names the constant.

    ## Why it breaks deployment
    `x[:, : int(x.size(1)) - 1]`, `x[:, : x.shape[1] // 2]` with the size through Python, or `.item()` of a length
    make the slice end a number while tracing. At the export size everything lines up; at any longer input the
    slice keeps the export-time length and the op that meets it fails (`Attempting to broadcast an axis by a
    dimension other than 1`), or, where nothing meets it, the model silently returns the export-time length.
    speechbrain's StatisticsPooling keeps `x[i, 0:int(round(lens[i] * T))]`: exported at batch 1 with relative
    length 1.0, the end is the export length, and every longer input is pooled over its first frames only.

    ## Example
    ```python
    return x[:, : int(x.shape[1]) - 1] + x[:, 1:]   # baked: Slice(x, 0, 6) at T=7; write x[:, :-1] + x[:, 1:]
    ```
    Repaired: the end becomes `Shape(x)[1] - 1`, computed at run time.

    ## Fix safety
    Safe when the constraint determines the end: of the expressions of the sizes equal to it at export
    (graphfix.analysis.hypotheses: `T`, `T - c`, `T // k`, `ceil(T / k)`, `min(T, c)`, the constant itself...) only
    one lets the graph run beyond the export size (`T - 1`, from a neighbouring `x[:, 1:]`). Unsafe when several do:
    a constant of more than 1 on the other side may be baked too (the halves `x[:, :h]`, `x[:, h:]` of
    `h = int(T) // 2` traced at T=8 fit `T - 4`, `T // 2` and `ceil(T / 2)`); the finding lists them and
    `--unsafe-fixes` applies the one that keeps the other constants. Not fixable (reported with the equation) when
    the expression cannot be built from the sizes of upstream tensors, or when the analysis' end is not one the
    constraint leaves. Not fixable either where the end is the export length and nothing downstream pins it: a
    model that keeps its first c frames on purpose, exported at exactly c, gives the same graph, and the relative
    length the trace read is gone from it (re-exported at another length, a baked end moves with it).
    """

    code = "GF007"
    name = "trace-baked-slice"
    severity = Severity.ERROR
    fixable = True
    traced_values = True

    @classmethod
    def baked_entries(cls, sizes, choices: dict[str, int]):
        """Each solved Slice end (input 2)."""
        return [(b.node, 2, b.position, b.value, b.expr) for b in baked_slices(sizes)]
    runtime_messages = (r"Attempting to broadcast an axis by a dimension other than 1",)
    runtime_order = 35  # before GF003: a broadcast fed by a constant-bound slice is this rule's
    runtime_hint = HINT

    @classmethod
    def claims_failure(cls, site: FailureSite) -> bool:
        """A broadcast failure within two nodes of a Slice whose bounds are constants."""
        if not any(re.search(pattern, site.message) for pattern in cls.runtime_messages):
            return False
        constants = {t.name for t in site.model.graph.initializer}
        constants |= {o for n in site.model.graph.node if n.op_type == "Constant" for o in n.output}
        return any(n.op_type == "Slice" and len(n.input) > 2 and n.input[2] in constants
                   for n in site.upstream(depth=2))

    def detect(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        sizes = sizes_if(ctx, "Slice")
        solved = set()
        for baked in baked_slices(sizes) if sizes else ():
            solved.add(baked.node.name)
            yield self._finding(ctx, sizes, baked)
        cuts = [cut for node in ctx.graph.nodes for cut in constant_cuts(node, ctx.constant_value, ctx.shape)]
        for cut in export_length_cuts(sizes, lambda: export_facts(ctx), cuts) if sizes and cuts else ():
            if cut.node.name not in solved:  # a constraint solved it: that finding says more, and fixes it
                yield self._export_length_finding(cut)
        if sizes and sizes.incomplete:
            yield self.reject(sizes.incomplete + "; later Slices were not checked (analysis incomplete)")

    def _finding(self, ctx: RuleContext, sizes, baked) -> Finding:
        node, sym, value = baked.node, baked.solution.symbol, baked.solution.value
        constraint = baked.solution.constraint
        message = (f"Slice '{node.name}' ends at {baked.value}, the export-time value of {baked.expr} "
                   f"({sym}={value}): '{constraint.node.name}' needs {constraint.left} = {constraint.right}, "
                   f"which holds only at {sym}={value}")
        kwargs = dict(nodes=[node, constraint.node], tensors=[node.inputs[0], node.inputs[2]], hint=HINT)
        if not size_expr(None, sizes, baked.expr, node.inputs[0]):
            return self.finding(f"{message}; {baked.expr} cannot be built from the sizes upstream", **kwargs)
        ends = slice_ends(baked)  # the hypotheses the constraint leaves, recomputed: the proposal must be one
        if not any(same(h.expr, baked.expr) for h in ends.alternatives()):
            return self.finding(f"{message}; the analysis proposes the end {hypotheses.show(baked.expr)}, which the "
                                f"constraint does not leave (it leaves {ends.describe()}): not repaired", **kwargs)
        rebuild = rebuilt_entries(node, 2, {baked.position: baked.expr}, sizes, ctx.opset)
        if ends.determined:
            safety, reason = Safety.SAFE, (f"determined by '{constraint.node.name}': of the expressions that equal "
                                           f"{baked.value} at export, only {hypotheses.show(baked.expr)} lets it run "
                                           "beyond")
        else:
            safety, reason = Safety.UNSAFE, (
                f"several ends fit '{constraint.node.name}': {ends.describe()}; applied "
                f"{hypotheses.show(baked.expr)}, the one that keeps the graph's other constants as they are: wrong "
                "if they were baked too (`x[:, :h]`, "
                "`x[:, h:]` with `h = int(T) // 2` needs T // 2 in both)")
            message += f"; the end may be {ends.describe()}"
        return self.finding(
            message, **kwargs,
            fix=Fix(f"compute end {baked.position} of Slice '{node.name}' as {hypotheses.show(baked.expr)} from "
                    "Shape ops",
                    apply=loosened(node, {baked.value, value}, rebuild), safety=safety, reason=reason))


    def _export_length_finding(self, cut: ExportLengthCut) -> Finding:
        node, data = cut.node, cut.node.inputs[0]
        if not cut.known:
            return self.finding(
                f"Slice '{node.name}' cuts axis {cut.axis} of '{data.name}' ({cut.length} long) at the constant "
                f"{cut.end}: inputs longer than that lose the rest. Nothing says the export length; if it was "
                f"{cut.end}, the end is a length traced through Python and baked (--trace-shape tells)",
                nodes=[node], tensors=[data, node.inputs[2]], hint=EXPORT_LENGTH_HINT, severity=Severity.INFO)
        where, does = (f"the export size of {cut.size}, which it grows with", "crops to it") if cut.size else \
            ("its length at export", "cuts nothing")
        return self.finding(
            f"Slice '{node.name}' cuts axis {cut.axis} of '{data.name}' ({cut.length} long) at the constant "
            f"{cut.end}, {where} ({cut.why}): it {does} at the export size and drops everything "
            f"past {cut.end} at every longer input, with no error. A length computed in Python while tracing "
            f"(`x[:, :int(round(lens[0] * x.shape[1]))]`, speechbrain's StatisticsPooling) is baked so; a model that "
            f"keeps its first {cut.end} on purpose, exported at exactly {cut.end}, gives the same graph, and the graph "
            "cannot say which: not repaired. Re-export at another length: a baked end moves with it",
            nodes=[node], tensors=[data, node.inputs[2]], hint=EXPORT_LENGTH_HINT)


def slice_ends(baked) -> hypotheses.Determination:
    """The ends that satisfy the constraint that pins the cut beyond the export size. A constant of more than 1 on
    the constraint's other side (`T - 4` from `x[:, 4:]`) may be baked as well: it is a second hole."""
    constraint, cut, solution = baked.solution.constraint, baked.solution.cut, baked.solution
    sized = next(a for a in cut.args if not a.is_Integer)
    cut_side, other = (constraint.left, constraint.right) if constraint.left.has(cut) else \
        (constraint.right, constraint.left)
    export = {solution.symbol: solution.value}
    space = {hypotheses.hole(): hypotheses.size_hypotheses(baked.value, export)}
    offset, rest = other.as_coeff_Add()
    if abs(offset) > 1:
        second = sympy.Symbol("other", integer=True)
        space[second] = hypotheses.size_hypotheses(abs(int(offset)), export)
        other = rest + (second if offset > 0 else -second)
    requirement = hypotheses.Requirement(cut_side.xreplace({cut: sympy.Min(sized, hypotheses.hole())}), other,
                                         f"'{constraint.node.name}' ({constraint.kind})", holes=tuple(space))
    return hypotheses.determine(space, [requirement], export)
