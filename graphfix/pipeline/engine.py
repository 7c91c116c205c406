"""The rule engine: detect → fix → clean-up → detect again, until nothing changes (bounded).

Rules only detect and describe fixes. The engine decides which fixes run (safe ones, unsafe ones only with
--unsafe-fixes, never two touching the same nodes in one round), then runs clean-up, toposort and unique naming
once, refreshes shapes, and detects again.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from graphfix.analysis.context import RuleContext
from graphfix.analysis.echoes import echoes
from graphfix.analysis.edits import Loosened
from graphfix.analysis.export_sizes import export_facts, export_sizes
from graphfix.analysis.shapes import infer_shapes
from graphfix.core.budget import ECHO_SECONDS, OutOfTime, Watchdog
from graphfix.core.errors import GraphfixError, InternalError
from graphfix.core.registry import format_traceback
from graphfix.core.rule import Finding, Rejection, Rule, RuleOptions, Safety, Severity
from graphfix.io.graphs import export_graph, import_graph, tidy
from graphfix.io.weights import Weights

MAX_ROUNDS = 8  # beyond one round for each node whose shape input a fix may rebuild (`round_limit`)


@dataclass
class Diagnosis:
    findings: list[Finding] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


@dataclass
class AppliedFix:
    rule: str
    nodes: list[str]
    summary: str
    moves: frozenset[str] = frozenset()  # the fix's (`Fix.moves`)

    def to_json(self) -> dict:
        return {"rule": self.rule, "nodes": self.nodes, "summary": self.summary}


@dataclass
class FixOutcome:
    model: onnx.ModelProto  # the input itself when nothing changed, else a light model (see graphfix.io.weights)
    applied: list[AppliedFix]
    before: Diagnosis
    after: Diagnosis
    failures: list[str] = field(default_factory=list)  # fixes that raised, one line each
    weights: Weights = field(default_factory=dict)  # what the light model's stubs stand for
    solved: dict[str, int] = field(default_factory=dict)  # the input dims' export sizes (fix_model(solve=True))

    @property
    def changed(self) -> bool:
        return bool(self.applied)


def analyse(model: onnx.ModelProto, base_dir: Path | None, options: RuleOptions,
            weights: Weights | None = None) -> RuleContext:
    """Shape-infer the model's skeleton (no weights copied) and import the model, with those shapes, into
    onnx-graphsurgeon for the rules. Rules see the skeleton as `ctx.model`; the graph holds the real weights
    (for a light model, the `weights` its stubs stand for)."""
    inferred = infer_shapes(model)
    ctx = RuleContext(inferred, import_graph(model, inferred.graph.value_info, weights), base_dir, options)
    ctx.declared = list(model.graph.value_info)  # the export's, which GF013 compares with what the graph computes
    return ctx


def detect(ctx: RuleContext, rules: list[type[Rule]]) -> Diagnosis:
    """Run every rule's detect(). A rule that raises is a graphfix bug: InternalError (exit 2), not a finding."""
    result = Diagnosis()
    for rule_cls in rules:
        if rule_cls.runtime_only or (ctx.options.static and rule_cls.needs_weights):
            continue
        noted = len(ctx.notes)
        try:
            for item in rule_cls().detect(ctx):
                (result.rejections if isinstance(item, Rejection) else result.findings).append(item)
        except GraphfixError:
            raise  # already says what went wrong (an internal error, a budget, an input error)
        except Exception as exc:
            # the model passed loading, so this is a graphfix bug, never a finding about the model
            raise InternalError(f"rule {rule_cls.code} ({rule_cls.name}) crashed: {format_traceback(exc)}") from exc
        result.findings.extend(Finding(rule_cls.code, "analysis-incomplete", Severity.INFO,
                                       f"{note}; {rule_cls.code} judged the rest without those shapes")
                               for note in ctx.notes[noted:])
    result.findings = [_echo_doubted(ctx, f) for f in result.findings]
    return result


RUNS_WHERE_IT_FAILED = frozenset({"GF003"})  # a fix that lets a model run where it failed at every size (a mask
# misaligned with what it masks, `h[pad] = 0`): what else was baked then runs too, at sizes the graph does not tell


def _length_guess(ctx: RuleContext) -> frozenset[int]:
    """The size a trace most likely baked into the constants of shape ops (graphfix.validate.graph_sizes), for a
    fix that knows no export size of its own: a model that failed at every size has none solved."""
    from graphfix.validate.graph_sizes import baked_size_hint

    hint = baked_size_hint(ctx.model)
    return frozenset({hint} if hint else ())


def _echo_doubted(ctx: RuleContext, finding: Finding) -> Finding:
    """A safe fix that makes a size follow the input, unsafe where a constant of the graph echoes that size
    (graphfix.analysis.echoes: `h.sum(1) / T` or `x[:, T - 1]` beside a Reshape of the same int T). Such fixes of GF004,
    GF006, GF007, GF008 and GF010 are `Loosened` edits that name the sizes, so the doubt is one for all of them;
    GF003's broadcast names none, but lets a model run that failed at every size: its doubt reads the size most
    likely baked and any scale of a sum over a length the graph leaves symbolic (red team 116: `h[pad] = 0`, then
    `h.sum(1) / float(h.shape[1])`, was repaired with exit 0); GF002's rebuild of repeat_interleave's own data flow
    names none."""
    fix = finding.fix
    if fix is None or fix.safety is not Safety.SAFE:
        return finding
    if isinstance(fix.apply, Loosened):
        values, products, own = fix.apply.values, fix.apply.products, fix.apply.node
    elif finding.rule in RUNS_WHERE_IT_FAILED:
        values, products, own = _length_guess(ctx), frozenset(), None
    else:
        return finding
    named = set(finding.nodes)
    _ = ctx.unmerged_shapes  # inferred before the bound: the inference has its own (helper 121)
    try:
        with Watchdog(ECHO_SECONDS):
            heard = echoes(ctx.graph, values, ctx.constant_value, ctx.shape_filled,
                           fixed=lambda node: node is own or (bool(node.name) and node.name in named),
                           fold=ctx.evaluator, products=products, unknown=own is None)
    except OutOfTime:  # caught outside the Watchdog's block: it can surface while leaving it
        heard = None
    if heard == []:
        return finding
    sizes = ", ".join(str(v) for v in sorted(values)) or "a length"
    said = f"the echo check did not finish within {ECHO_SECONDS:g} s, so whether a constant of the graph " \
        "is that size is not known" if heard is None else f"{'; '.join(heard[:2])}{' (and more)' * (len(heard) > 2)}"
    reason = (f"{fix.reason}; but {said}: if the Python int "
              f"that gave {sizes} is used there too, this fix lets the model run at other sizes with that "
              "constant still at the export size, and the original, which fails there, shows no reference; "
              "export at a size no constant of the model equals, or say which with --unsafe-fixes")
    return dataclasses.replace(finding, fix=dataclasses.replace(fix, safety=Safety.UNSAFE, reason=reason))


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: onnx-graphsurgeon allocates several objects per node and tensor,
    and the collector's repeated scans of them made analysis of a 100k-node graph grow faster than the graph."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def diagnose_model(model: onnx.ModelProto, base_dir: Path | None, rules: list[type[Rule]],
                   options: RuleOptions, weights: Weights | None = None) -> Diagnosis:
    return diagnose_solving(model, base_dir, rules, options, weights)[0]


def diagnose_solving(model: onnx.ModelProto, base_dir: Path | None, rules: list[type[Rule]], options: RuleOptions,
                     weights: Weights | None = None, solve: bool = False) -> tuple[Diagnosis, dict[str, int]]:
    """The diagnosis and, with `solve`, the input dims' export sizes as `fix_model` learns them for the proof."""
    with collector_paused():
        ctx = analyse(model, base_dir, options, weights)
        diagnosis = detect(ctx, rules)
        return diagnosis, solved_sizes(ctx, diagnosis) if solve else {}


def solved_sizes(ctx: RuleContext, diagnosis: Diagnosis) -> dict[str, int]:
    """The input dims' export sizes the model's own analysis solves, only where a finding has a fix to apply or a
    choice to make (without one the proof needs no export size, and the analysis is not paid for)."""
    if not any(f.fix is not None or f.choice is not None for f in diagnosis.findings):
        return {}
    solved = dict(export_sizes(ctx, ctx.evaluator).values)
    derived: dict[str, list] = {}  # dims only lengths derived from them tell: a size that gives every one
    for fact in export_facts(ctx):
        if fact.length is not None and fact.dim not in solved:
            derived.setdefault(fact.dim, []).append(fact)
    for dim, facts in derived.items():
        least = [fact.least() for fact in facts]
        if None not in least and all(fact.gives(max(least)) for fact in facts):
            solved[dim] = max(least)
    return solved


def fix_model(model: onnx.ModelProto, base_dir: Path | None, rules: list[type[Rule]], options: RuleOptions,
              max_rounds: int | None = None, solve: bool = False, weights: Weights | None = None) -> FixOutcome:
    """Apply fixes until no applicable fix is left or `max_rounds` (by default `round_limit`) is reached. `solve`:
    also learn the input dims' export sizes from the model's own analysis, before any fix edits it (the proof
    starts there: one analysis of the original, not two). `weights`: what a light model's stubs stand for (a model
    parsed light)."""
    with collector_paused():
        return _fix_rounds(model, base_dir, rules, options, max_rounds or round_limit(model), solve,
                           dict(weights or {}))


def round_limit(model: onnx.ModelProto) -> int:
    """A fix may expose the next: a baked Reshape leaves what follows it static until it is rebuilt, so a stack of
    attention blocks with `view(int(B), int(T), ...)` takes two rounds a block (helper 129: five blocks were refused
    at 8 rounds). One round for each node that reads a shape, and MAX_ROUNDS more."""
    return MAX_ROUNDS + sum(node.op_type in ("Reshape", "Expand", "Slice", "ConstantOfShape", "Tile", "Range")
                            for node in model.graph.node)


def _fix_rounds(model: onnx.ModelProto, base_dir: Path | None, rules: list[type[Rule]], options: RuleOptions,
                max_rounds: int, solve: bool, weights: Weights) -> FixOutcome:
    ctx = analyse(model, base_dir, options, weights)
    before = after = detect(ctx, rules)
    solved = solved_sizes(ctx, before) if solve else {}  # before any fix edits the graph
    if any(f.fix is not None for f in before.findings):  # later rounds see what this graph says of its export
        options = dataclasses.replace(options, exported=export_facts(ctx))
    # the rounds pass a light model on; `weights` (the input's own tensors) grows with what each round detaches
    applied: list[AppliedFix] = []
    failures: list[str] = []
    tried: set[tuple[str, tuple[str, ...], str]] = set()
    for _ in range(max_rounds):
        round_applied, failed = _apply_round(ctx, after.findings, options, tried)
        if failed:  # a fix raised half-way: drop this round's edits and go on without that fix
            failures.append(failed)
            tried.difference_update((a.rule, tuple(a.nodes), a.summary) for a in round_applied)
            ctx = analyse(model, base_dir, options, weights)
            after = detect(ctx, rules)
            continue
        if not round_applied:
            break
        applied.extend(round_applied)
        model = export_graph(tidy(ctx.graph), like=model, weights=weights)
        ctx = analyse(model, base_dir, options, weights)
        after = detect(ctx, rules)
    return FixOutcome(model, applied, before, after, failures, weights, solved)


def _apply_round(ctx: RuleContext, findings: list[Finding], options: RuleOptions,
                 tried: set[tuple[str, tuple[str, ...], str]]) -> tuple[list[AppliedFix], str]:
    """Apply the applicable, non-overlapping fixes. The text, when not empty, says which fix raised: the
    graph is then half-edited and must be rebuilt.

    A fix waits for the next round where its nodes overlap one applied in this round, or lie downstream of one
    another rule applied: its rule read the shapes there before that fix changed them (GF006 sizing a mask by the
    keys' length that GF004 is making dynamic). One rule's fixes are built to hold together."""
    applied: list[AppliedFix] = []
    touched: set[str] = set()
    downstream: dict[str, set[str]] = {}  # rule -> the nodes its fixes of this round feed
    for finding in findings:
        fix = finding.fix
        if fix is None or (fix.safety is Safety.UNSAFE and not options.unsafe_fixes):
            continue
        key = (finding.rule, tuple(finding.nodes), fix.summary)
        if key in tried:  # the same fix came back: it did not take, do not loop on it
            continue
        if touched.intersection(finding.nodes) or any(
                rule != finding.rule and fed.intersection(finding.nodes) for rule, fed in downstream.items()):
            continue
        tried.add(key)
        try:
            fix.apply(ctx.graph)
        except Exception as exc:
            return applied, f"{finding.rule} fix '{fix.summary}' failed: {format_traceback(exc)}"
        touched.update(finding.nodes)
        downstream.setdefault(finding.rule, set()).update(_fed_by(ctx.graph, finding.nodes))
        applied.append(AppliedFix(finding.rule, list(finding.nodes), fix.summary, fix.moves))
    return applied, ""


def _fed_by(graph: gs.Graph, names: list[str]) -> set[str]:
    """The names of the nodes that read, directly or not, what the nodes `names` compute."""
    fed, wanted = set(), set(names)
    stack = [node for node in graph.nodes if node.name in wanted]
    while stack:
        for tensor in stack.pop().outputs:
            for consumer in tensor.outputs:
                if consumer.name not in fed:
                    fed.add(consumer.name)
                    stack.append(consumer)
    return fed
