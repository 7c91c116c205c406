"""The engine: detect → fix → tidy → detect, bounded; crashing rules and failing fixes are contained."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from conftest import op_types, parse, run

from graphfix.core.rule import Fix, Rule, RuleOptions, Safety
from graphfix.pipeline.engine import detect, fix_model

MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] X) => (float[N, 4] Y) { A = Neg(X)  Y = Neg(A) }"""


class Crashes(Rule):
    """Raises."""

    code, name = "TST001", "crashes"

    def detect(self, ctx):
        raise ValueError("boom")


class DoubleNegation(Rule):
    """Neg(Neg(x)) is x."""

    code, name = "TST002", "double-negation"

    def detect(self, ctx):
        for node in ctx.graph.nodes:
            if node.op != "Neg":
                continue
            inner = ctx.producer(node.inputs[0])
            if inner is None or inner.op != "Neg":
                yield self.reject("input is not produced by Neg", nodes=[node])
                continue
            yield self.finding("double negation", nodes=[inner, node],
                               fix=Fix("bypass", apply=_bypass(node.name, inner.name), safety=Safety.SAFE))


def _bypass(outer_name, inner_name):
    def apply(graph: gs.Graph):
        nodes = {n.name: n for n in graph.nodes}
        outer, inner = nodes[outer_name], nodes[inner_name]
        source = inner.inputs[0]
        out = outer.outputs[0]
        identity = gs.Node("Identity", inputs=[source], outputs=[out])
        outer.outputs.clear()
        graph.nodes.append(identity)

    return apply


class AlwaysFails(DoubleNegation):
    """Its fix raises half-way."""

    code, name = "TST003", "always-fails"

    def detect(self, ctx):
        for finding in super().detect(ctx):
            if hasattr(finding, "fix") and finding.fix:
                finding.fix = Fix("explode", apply=_explode, safety=Safety.SAFE)
            yield finding


def _explode(graph):
    graph.nodes[0].outputs.clear()
    raise RuntimeError("half-way")


class UnsafeOnly(DoubleNegation):
    """Same fix, declared unsafe."""

    code, name = "TST004", "unsafe-only"

    def detect(self, ctx):
        for finding in super().detect(ctx):
            if hasattr(finding, "fix") and finding.fix:
                finding.fix.safety = Safety.UNSAFE
            yield finding


def test_crashing_rule_is_an_internal_error_never_a_finding():
    from graphfix.core.errors import InternalError
    from graphfix.pipeline.engine import analyse

    with pytest.raises(InternalError) as raised:
        detect(analyse(parse(MODEL), None, RuleOptions()), [DoubleNegation, Crashes])
    assert raised.value.exit_code == 2
    assert "rule TST001 (crashes) crashed: ValueError: boom" in str(raised.value)
    assert "--debug" in str(raised.value) and isinstance(raised.value.__cause__, ValueError)


def test_fix_runs_then_engine_tidies_and_redetects():
    model = parse(MODEL)
    outcome = fix_model(model, None, [DoubleNegation], RuleOptions())
    assert [a.rule for a in outcome.applied] == ["TST002"]
    assert op_types(outcome.model) == ["Identity"]
    assert outcome.after.findings == []
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(run(outcome.model, {"X": x})[0], run(model, {"X": x})[0])


def test_failing_fix_leaves_the_graph_untouched():
    model = parse(MODEL)
    outcome = fix_model(model, None, [AlwaysFails], RuleOptions())
    assert outcome.applied == [] and outcome.model is model
    assert "half-way" in outcome.failures[0]


def test_unsafe_fix_needs_the_flag():
    assert fix_model(parse(MODEL), None, [UnsafeOnly], RuleOptions()).applied == []
    assert len(fix_model(parse(MODEL), None, [UnsafeOnly], RuleOptions(unsafe_fixes=True)).applied) == 1


def test_healthy_model_is_returned_as_is():
    model = parse(MODEL)
    assert fix_model(model, None, [], RuleOptions()).model is model
