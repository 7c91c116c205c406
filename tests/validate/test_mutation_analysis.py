"""The proof and the determination, tested by mutation of the analysis (#21 item 5).

Each mutant makes an analysis function that both the rules and the proof's re-trace read return another
hypothesis: another candidate entry of a Reshape, another expression for a baked size (`2*T` for `T // 3`, `T` for
`T - 1`, `T // 2` for `(T - 1) // 2 + 1`, ceil for floor), another structure for a constant (a band for a tril, a
triangle's offset +-1, an eye for a learned gain, an arange's scale), or a repair correct only at degenerate sizes
(GF003 masking with `mask[:, :1]`). The real `graphfix.repair` pipeline then runs on a small PyTorch module exported
by the TorchScript exporter with dynamic axes. The component under test is what comes after the analysis: the
rules' determination (graphfix.analysis.hypotheses recomputes what the graph's constraints leave) and the proof.

A mutant is killed when repair writes no repair (its finding refused it or reported it ambiguous, so no fix ran by
default) or validation failed. Every mutant must be killed; the kill rate per family is printed (`pytest -s`).
The unmutated pipeline repairs each determined model, and the repair matches PyTorch at batch 1 and at lengths past
the export one: a kill is not a pipeline that refuses everything.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import defaultdict

import numpy as np
import onnxruntime as ort
import pytest
import sympy

import graphfix
from graphfix.analysis.sizes.solve import BakedEntry, BakedPad
from graphfix.analysis.structured import Band
from graphfix.validate import ValidationOptions

pytest.importorskip("torch")
import torch
from fixtures.mutation_models import MODELS, export_all, feeds

pytestmark = pytest.mark.torch

# the original runs at one residue class (thirds) or only at its export size: `runs` is the level it can reach
RUNS = ValidationOptions(require="runs")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (path, module, trace_shapes), each model exported once (tests/fixtures/mutation_models.py)."""
    return export_all(tmp_path_factory.mktemp("mutation_analysis"))


def repair(exported, name: str, **options):
    path, _, trace = exported[name]
    return graphfix.repair(path, simplify=False, trace_shapes=trace, validation=RUNS, **options)


def run(model, feed: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


# --- mutants: the analysis returns another hypothesis -------------------------------------------------------------
def _patch(monkeypatch, name: str, replacement) -> None:
    """Replace the function `name` everywhere the rules and the proof read it (their own module globals)."""
    import graphfix.analysis.sizes as sizes_package

    original = getattr(sizes_package, name, None)
    if original is None:
        import graphfix.analysis.structured as structured
        original = getattr(structured, name)
    patched = replacement(original)
    hits = 0
    for module in list(sys.modules.values()):
        modname = getattr(module, "__name__", "") or ""
        if (modname.startswith("graphfix") or modname.startswith("rules")) and \
                getattr(module, name, None) is original:
            monkeypatch.setattr(module, name, patched)
            hits += 1
    assert hits, name


def _symbol(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, integer=True, positive=True)


T, Bsym = _symbol("T"), _symbol("B")


def entries(*new: tuple[int, sympy.Expr]):
    """baked_reshapes proposes these (index, expression) entries instead of its own."""
    def wrap(original):
        def mutated(sizes):
            for baked in original(sizes):
                target = sizes.value(baked.node.inputs[1])
                yield dataclasses.replace(baked, entries=[BakedEntry(i, int(target[i]), e) for i, e in new])
        return mutated
    return "baked_reshapes", wrap


def slice_end(expr: sympy.Expr):
    def wrap(original):
        def mutated(sizes):
            for baked in original(sizes):
                yield dataclasses.replace(baked, expr=expr)
        return mutated
    return "baked_slices", wrap


def pad_amount(expr: sympy.Expr):
    class Mutated(BakedPad):
        @property
        def expr(self):
            return expr.xreplace({T: self.length})

    def wrap(original):
        def mutated(sizes):
            for baked in original(sizes):
                yield Mutated(**{f.name: getattr(baked, f.name) for f in dataclasses.fields(BakedPad)})
        return mutated
    return "baked_pads", wrap


def band(lo, hi, others=()):
    """band_pattern proposes the band lo <= j - i <= hi of the constant's values (1/0 when not a mask)."""
    def wrap(original):
        def mutated(value, axes):
            found = original(value, axes)
            if isinstance(found, str):
                levels = np.unique(value)
                inside, outside = levels[-1], levels[0]
            else:
                inside, outside = found.inside, found.outside
            return Band(lo, hi, np.asarray(inside, value.dtype), np.asarray(outside, value.dtype), tuple(others))
        return mutated
    return "band_pattern", wrap


def arange(start: float, step: float):
    def wrap(original):
        def mutated(value, axes):
            found = original(value, axes)
            return None if found is None else (start, step, found[2])
        return mutated
    return "arange_axis", wrap


def degenerate_mask():
    """GF003's unsqueeze applied to mask[:, :1]: right where time is 1, wrong everywhere else."""
    import numpy as np_
    import onnx_graphsurgeon as gs

    def wrap(original):
        def mutated(node, axes_of, opset):
            apply = original(node, axes_of, opset)

            def run_it(graph):
                for index in axes_of:
                    tensor = node.inputs[index]
                    cut = gs.Variable(f"{tensor.name}_first", dtype=tensor.dtype)
                    constants = [gs.Constant(f"{node.name}_{k}_{index}", np_.array(v, np_.int64))
                                 for k, v in (("s", [0]), ("e", [1]), ("a", [1]))]
                    graph.nodes.append(gs.Node("Slice", f"{node.name}_first_{index}", inputs=[tensor, *constants],
                                               outputs=[cut]))
                    node.inputs[index] = cut
                apply(graph)
            return run_it
        return mutated
    return "_unsqueeze", wrap


def _patch_rule(monkeypatch, rule_module: str, name: str, replacement) -> None:
    module = sys.modules[rule_module]
    monkeypatch.setattr(module, name, replacement(getattr(module, name)))


F = sympy.floor
MUTANTS = [
    # another candidate entry
    ("candidate", "thirds", entries((2, 2 * T))),
    ("candidate", "thirds", entries((2, T + 6))),
    ("candidate", "thirds", entries((1, F(T / 3)), (2, 2 * T))),
    ("candidate", "heads", entries((2, T - 3))),
    ("candidate", "heads", entries((0, T), (2, T - 3))),
    ("candidate", "front-end", entries((2, F((T - 1) / 2) - 8))),
    # another expression
    ("expression", "delta", slice_end(T)),
    ("expression", "delta", slice_end(T - 2)),
    ("expression", "delta", slice_end(T + 1)),
    ("expression", "delta", slice_end(2 * T)),
    ("expression", "delta", slice_end(F(T / 2))),
    ("expression", "delta", slice_end(sympy.ceiling(7 * T / 8))),
    ("expression", "halves", slice_end(T)),
    ("expression", "halves", slice_end(F(T / 2))),
    ("expression", "halves", slice_end(T - 3)),
    ("expression", "halves", slice_end(T - 5)),
    ("expression", "halves", slice_end(2 * T)),
    ("expression", "thirds", entries((1, F(T / 2)))),
    ("expression", "thirds", entries((1, T))),
    ("expression", "thirds", entries((1, T - 4))),
    ("expression", "thirds", entries((1, F((T + 2) / 4)))),  # 2 at T=6, 2 at T=9 (PyTorch: 3)
    ("expression", "thirds", entries((1, F(T / 3) + 1))),
    ("expression", "heads", entries((0, T - 1))),
    ("expression", "heads", entries((0, T + 1))),
    ("expression", "heads", entries((0, 2 * T))),
    ("expression", "heads", entries((0, F(T / 2)))),
    ("expression", "chunked", pad_amount(sympy.Mod(-T, 8))),
    ("expression", "chunked", pad_amount(sympy.Mod(-(T + 1), 4))),
    ("expression", "chunked", pad_amount(T - 2)),
    ("expression", "chunked", pad_amount(sympy.Mod(T, 2))),
    ("expression", "front-end", entries((1, F(T / 2)))),
    ("expression", "front-end", entries((1, sympy.ceiling((T - 1) / 2) + 1))),
    ("expression", "front-end", entries((1, F((T - 1) / 2)))),
    ("expression", "front-end", entries((1, F(T / 2) + 1))),
    # another structure
    ("structure", "window", band(None, 0)),
    ("structure", "window", band(-3, 0)),
    ("structure", "window", band(-1, 0)),
    ("structure", "window", band(-2, 1)),
    ("structure", "window", band(0, 0)),
    ("structure", "window", band(-2, None)),
    ("structure", "eye", band(None, 0)),
    ("structure", "eye", band(-1, 0)),
    ("structure", "eye", band(1, 1)),
    ("structure", "eye", band(-1, -1)),
    ("structure", "tril", band(None, 0)),  # claims the triangle is determined (no alternatives named)
    ("structure", "tril", band(None, 1)),
    ("structure", "tril", band(-6, 0)),  # a window as wide as the export length: fits, but not alone
    ("structure", "gain", band(0, 0)),  # an eye for a learned gain
    ("structure", "gain", band(None, 0)),
    ("structure", "arange", arange(0.0, 2.0)),
    ("structure", "arange", arange(1.0, 1.0)),
    # correct only at degenerate sizes (or up to the export size)
    ("degenerate", "delta", slice_end(sympy.Min(T, 7))),
    ("degenerate", "thirds", entries((1, sympy.Min(F(T / 3), 2)))),
    ("degenerate", "chunked", pad_amount(sympy.Min(sympy.Mod(-T, 4), 1))),
    ("degenerate", "index-put", degenerate_mask()),
]


def _kill(result, rule: str) -> str | None:
    """Why this repair counts as refused (no fix of the rule ran: its finding refused the proposal or reported it
    ambiguous; or the proof failed the result), or None when it was written as a passed repair."""
    if not any(a.rule == rule for a in result.applied):
        findings = [f for f in result.before.findings if f.rule == rule]
        if any(f.fix is not None and f.fix.safety.value == "unsafe" for f in findings):
            return "reported ambiguous"
        return "refused by the analysis"
    if result.status != "repaired" or (result.validation and not result.validation.get("passed", True)):
        return "proof"
    return None


RULE_OF = {"delta": "GF007", "halves": "GF007", "thirds": "GF004", "heads": "GF004", "front-end": "GF004",
           "chunked": "GF008", "window": "GF006", "eye": "GF006", "tril": "GF006", "arange": "GF006",
           "gain": "GF006", "index-put": "GF003"}


def test_the_unmutated_pipeline_repairs_each_determined_model_and_matches_pytorch(exported):
    for name, spec in MODELS.items():
        result = repair(exported, name)
        if not spec.determined:
            assert result.status != "repaired", name  # ambiguous or not repairable: nothing written by default
            continue
        assert result.status == "repaired", (name, result.error)
        module = exported[name][1]
        for batch, time in spec.sizes:
            feed = feeds(name, batch, time)
            with torch.no_grad():
                expected = module(*(torch.from_numpy(v) for v in feed.values())).numpy()
            np.testing.assert_allclose(run(result.model, feed), expected, rtol=1e-4, atol=1e-5, err_msg=name)


def test_every_analysis_mutant_is_refused_or_reported_ambiguous(exported, monkeypatch):
    assert len(MUTANTS) >= 50
    kills: dict[str, list[bool]] = defaultdict(list)
    reasons: dict[str, int] = defaultdict(int)
    survivors = []
    for family, name, (function, wrap) in MUTANTS:
        with monkeypatch.context() as patch:
            if function == "_unsqueeze":
                _patch_rule(patch, "graphfix.rules.gf003_broadcast_mismatch", function, wrap)
            else:
                _patch(patch, function, wrap)
            result = repair(exported, name)
        why = _kill(result, RULE_OF[name])
        kills[family].append(why is not None)
        reasons[why or "survived"] += 1
        if why is None:
            survivors.append(f"{family}/{name}/{function}: {[a.summary for a in result.applied]}")
    summary = ", ".join(f"{family} {sum(k)}/{len(k)}" for family, k in kills.items())
    print(f"\nanalysis mutants killed per family: {summary}; by: {dict(reasons)}")
    assert not survivors, f"killed per family: {summary}; survivors: {survivors}"
