"""What a repaired model is compared with at one probe size: each strategy behind one small interface.

    expected = reference.expect(probe)    # Expected (outputs to compare with), or a str: why it is no reference
    comparisons = expected.compare(probe.actual, rtol, atol)

- `OriginalReference` (level `original`): the original's own run there, where it runs as it declares (an output
  at its export-time shape is compared on the region both shapes cover); at a known export size, every output in
  full; not where it ran only as onnxruntime allows (graphfix.validate.lenient).
- `SamplesReference` (level `consistent`): the original run a few samples at a time, along the dims whose samples
  it is shown to compute independently (graphfix.validate.consistency).
- `DerivedReference` (no level): the original re-traced at that size (graphfix.validate.retrace). It comes from
  graphfix's own analysis, so it checks that the rewrite implements the analysis, never that the analysis is
  right: graphfix.validate.evidence counts it toward no level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from graphfix.validate.compare import OutputComparison, compare_outputs, compare_overlap
from graphfix.validate.consistency import Samples, contradicts, reference
from graphfix.validate.lenient import emptied, skipped_empty_input
from graphfix.validate.retrace import Retracer
from graphfix.validate.runner import ModelRunner, RunResult

EXACT = "the export size, or a size giving every size the graph baked: compared in full"


@dataclass
class Probe:
    """One probe size: the binding, the inputs both models got, the original's run and the candidate's outputs."""

    binding: dict[str, int]
    feeds: dict[str, np.ndarray]
    original: RunResult
    actual: dict[str, np.ndarray]
    exact: bool = False  # at a known export size: the original is right there by construction


@dataclass
class Expected:
    """Outputs a reference expects (several sets: one per way it was computed), the names compared only on the
    region both shapes cover, and a note on how it was obtained."""

    outputs: list[dict[str, np.ndarray]]
    note: str = ""
    overlap: set[str] = field(default_factory=set)
    evidence: bool = True  # False: compared (a difference refutes), but a match earns no level (a coincidence)

    def compare(self, actual: dict[str, np.ndarray], rtol: float, atol: float) -> list[OutputComparison]:
        comparisons: list[OutputComparison] = []
        for outputs in self.outputs:
            comparisons += compare_outputs({k: v for k, v in outputs.items() if k not in self.overlap}, actual,
                                           rtol, atol)
            comparisons += [compare_overlap(name, outputs[name], actual[name], rtol, atol)
                            for name in sorted(self.overlap) if name in outputs and name in actual]
        return comparisons


class Reference(Protocol):
    level: str | None  # the evidence a comparison with it earns; None: a check that earns none

    def expect(self, probe: Probe) -> Expected | str: ...


@dataclass
class OriginalReference:
    """The original's own run. `declared`: its declared output dims; `export_shapes`: its output shapes at the
    export size (filled once it ran there); `fixed`: its output dims as onnx's shape inference of its own graph
    gives them (asked for only where a run may have spread a length of 1)."""

    declared: dict[str, list | None]
    export_shapes: dict[str, list[int]]
    fixed: Callable[[], dict[str, list | None]] = dict
    runner: ModelRunner | None = None  # the original's, to look at a run ONNX would reject (`lenient`)
    level: str = "original"

    def expect(self, probe: Probe) -> Expected | str:
        if not probe.original.ok:
            return "the original fails here"
        expected = probe.original.outputs
        if probe.exact:  # right by construction there: every output in full, nothing left out
            return Expected([expected], EXACT)
        if all(np.size(value) == 0 for value in expected.values()):
            return "the original returns only empty outputs here: nothing to compare"
        if self.runner is not None and emptied(expected, probe.actual):
            lenient = skipped_empty_input(self.runner, probe.feeds)
            if lenient:
                return f"the original runs here only as onnxruntime allows: {lenient}"
        wrong = contradicts(expected, self.declared, probe.binding)
        baked = {name for name, value in expected.items() if wrong and list(np.shape(value)) ==
                 self.export_shapes.get(name) and list(np.shape(value)) != list(np.shape(probe.actual.get(name)))}
        spread = {name for name, value in expected.items()
                  if _spread_from_one(np.shape(value), np.shape(probe.actual.get(name)), self.declared.get(name),
                                      lambda name=name: self.fixed().get(name))}
        if wrong and not baked | spread:
            return f"the original {wrong}"
        notes = [f"the original returns its export-time shape for {sorted(baked)}"] if baked else []
        notes += [f"the original spreads a length of 1 along a dynamic axis of {sorted(spread - baked)} (a "
                  "broadcast against a baked size)"] if spread - baked else []
        note = ", ".join(notes) + ": compared on the region both shapes cover" if notes else ""
        return Expected([expected], note, baked | spread, evidence=not spread - baked)


def _spread_from_one(original: tuple, candidate: tuple, declared: list | None,
                     fixed: Callable[[], list | None]) -> bool:
    """Where the two shapes differ, the candidate's length is 1 and the original's is the size the original's own
    graph fixes there (its shape inference says so), on axes the model declares dynamic: the original broadcast a
    length of 1 against a size baked into it (a table of the export length added to one frame), the one way a
    broken original runs there. Its values cover the candidate's. An original whose length there follows its
    inputs is no such case: a candidate that returns 1 there is compared in full, and differs."""
    differ = [axis for axis, (a, b) in enumerate(zip(original, candidate, strict=False)) if a != b]
    if not (declared is not None and len(original) == len(candidate) == len(declared) and differ and all(
            candidate[axis] == 1 < original[axis] and not isinstance(declared[axis], int) for axis in differ)):
        return False
    dims = fixed()
    return dims is not None and len(dims) == len(original) and all(dims[axis] == original[axis] for axis in differ)


@dataclass
class SamplesReference:
    """The original run `group` samples at a time (the export batch size, then 1) along each dim of `samples`."""

    original: ModelRunner
    samples: Callable[[], list[Samples]]  # tried on first use: it costs runs of the original
    why_none: Callable[[], list[str]]  # why no dim qualifies, once `samples` ran
    export: dict[str, int]
    declared: dict[str, list | None]
    level: str = "consistent"

    def expect(self, probe: Probe) -> Expected | str:
        found = self.samples()
        if not found:
            return "; ".join(self.why_none())
        outputs, compared, notes = [], [], []
        for samples in found:
            batch = samples.dim
            for group in dict.fromkeys([self.export[batch], 1]):
                if group == probe.binding[batch] and not probe.original.ok:
                    continue  # the original at this very binding already failed
                ref = reference(self.original, probe.feeds, probe.binding, samples, group, self.declared)
                if ref.outputs is None:
                    notes.append(ref.why_not)
                    continue
                lenient = emptied(ref.outputs, probe.actual) and skipped_empty_input(self.original, ref.feeds)
                if lenient:
                    notes.append(f"at {batch}={group} it runs only as onnxruntime allows: {lenient}")
                    continue
                outputs.append(ref.outputs)
                compared.append(f"{batch}={group}")
        if not outputs:
            return "; ".join(notes)
        return Expected(outputs, f"compared sample by sample with the original at {' and '.join(compared)}")


@dataclass
class DerivedReference:
    """The original re-traced at the probe's binding, where a re-trace exists and runs as `promises` declare."""

    retracer: Retracer
    promises: dict[str, list | None]
    level: str | None = None

    def expect(self, probe: Probe) -> Expected | str:
        runner = self.retracer.at(probe.binding)
        if runner is None:
            return "nothing to re-trace at these sizes"
        expected = runner.run(probe.feeds)
        if not expected.ok:
            return "the original re-traced fails here"
        wrong = contradicts(expected.outputs, self.promises, probe.binding)
        if wrong:
            return f"the original re-traced {wrong}"
        return Expected([expected.outputs], f"re-traced: {self.retracer.describe()} set to these sizes")
