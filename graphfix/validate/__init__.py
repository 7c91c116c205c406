"""Proving a repaired model: run it against the original at several sizes, say how strong the proof is, and
explain any difference.

    validation = validate(original, candidate, ValidationOptions())
    if not validation.passed:
        print(*validation.reasons, sep="\\n")

Each probe size carries the strongest evidence obtained there (graphfix.validate.evidence), counting only
references that graphfix's own analysis did not build:

- `original`: the original runs there, and its outputs, values and shapes, are the oracle. Where it returns an
  output at its export-time shape (the bug being repaired), the region both shapes cover is compared instead. At
  an export size that was given (`trace_sizes`) or solved from the graph (`solved_sizes`, taken only where the
  original runs), the repaired model must equal the original in full wherever it runs there.
- `consistent`: the original fails there, but run a few samples at a time (the export batch size, batch 1) it
  gives what the repaired model must give for those samples (graphfix.validate.consistency); only along a dim
  whose samples the original itself is shown to compute independently at its export size.
- `runs`: the repaired model runs, its shapes agree with what the original declares and with symbolic shape
  inference; no values are compared.

A size where a probed dim is 1, equals another probed dim, or equals a static size of the graph earns `runs` at
most (a coincidence may make the original run there); it is still compared, and a difference still fails.

Separately, the `derived` check compares the repaired model with the original re-traced at each size
(graphfix.validate.retrace: the analysis' baked sizes and structured constants set for that size). It shows that
the rewrite implements its analysis, not that the analysis is right: a difference fails validation, and a match
raises no level.

`torch` (compared with the PyTorch module) is reached through graphfix.export and graphfix.verify.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphfix.analysis.sizes import bind, tied_dims
from graphfix.validate.anchor import anchored, known_export_size
from graphfix.validate.evidence import LEVELS, Judge, derived_summary, dim_evidence, failure_reasons, weakest
from graphfix.validate.footprint import Footprint
from graphfix.validate.inputs import ValidationOptions, probe_sizes, synthesize_inputs
from graphfix.validate.probe import RuntimeFailure, probe
from graphfix.validate.runner import ModelRunner, ModelSource
from graphfix.validate.sizes import mask_aliases, reference_bindings
from graphfix.validate.steps import step_hint

__all__ = [
    "LEVELS",
    "ModelSource",
    "RuntimeFailure",
    "SizeRun",
    "Validation",
    "ValidationOptions",
    "probe",
    "probe_sizes",
    "synthesize_inputs",
    "validate",
]

from graphfix.validate.evidence import SizeRun


@dataclass
class Validation:
    passed: bool
    sizes: list[dict[str, int]]
    runs: list[SizeRun]
    reasons: list[str]  # one line each, why it failed ([] when passed)
    divergence: dict | None = None  # first diverging node when outputs disagree
    evidence: str = "runs"  # the weakest of the dims' evidence (see `dims`)
    dims: dict[str, str] = field(default_factory=dict)  # symbolic dim -> strongest evidence away from export size
    require: str = "runs"
    refuted: bool = False  # a failure where the original gives a reference, not only where both fail (`_refuted`)

    @property
    def failed_sizes(self) -> int:
        return sum(1 for run in self.runs if run.failed)

    def to_json(self) -> dict[str, Any]:
        return _plain(
            {
                "passed": self.passed,
                "evidence": self.evidence,
                "require": self.require,
                "dims": dict(self.dims),
                "derived": derived_summary(self.runs),
                "sizes": [dict(s) for s in self.sizes],
                "failed_sizes": self.failed_sizes,
                "runs": [r.to_json() for r in self.runs],
                "reasons": list(self.reasons),
                "divergence": self.divergence,
            }
        )


def validate(original: ModelSource | ModelRunner, candidate: ModelSource | ModelRunner,
             options: ValidationOptions) -> Validation:
    """Run both models at every probe size and decide whether the candidate may replace the original."""
    if options.require not in LEVELS:
        raise ValueError(f"require must be one of {', '.join(LEVELS)}, not {options.require!r}")
    before = ModelRunner.from_source(original)
    after = before if candidate is original else ModelRunner.from_source(candidate)
    if after.session is None:
        subject = "the model" if after is before else "the repaired model"
        return Validation(False, [], [], [f"{subject} cannot be loaded by onnxruntime: {after.load_error}"],
                          require=options.require)
    footprint = Footprint.of(before.proto, {})  # a size over the memory budget is not run: NotProbed (exit 1)
    options, known = known_export_size(before, options, footprint)  # given or solved, not guessed
    options = anchored([before, after], before.proto, options, guard=footprint.check)
    tied = tied_dims(after.proto)  # a mask's length computed from the audio's: feed consistent sizes
    sizes = probe_sizes(before.proto, options, tied, moved=footprint.fits)
    for binding in sizes:
        footprint.check_sizes(binding)
    aliases: dict[str, set[str]] = {}  # By = B: the samples of y move with x's
    for dim, source in tied.items():
        if getattr(source, "is_Symbol", False):
            aliases.setdefault(str(source), set()).add(dim)
    judge = Judge(before, after, options, sizes[0], known=known, derived_dims={*tied, *mask_aliases(before.proto)},
                  aliases=aliases)
    runs = [judge.at(binding, at_export=index == 0) for index, binding in enumerate(sizes)]
    dims = dim_evidence(runs, sizes[0], judge.probed_dims)
    complete = after is before or LEVELS.index(weakest(dims.values())) >= LEVELS.index("consistent")
    # the batch dims are tried on the original (two runs each) only when a dim still lacks a reference; one it
    # mixes samples along (whisper's log-mel clamps at the maximum of the whole batch) is moved alone too: where
    # the original runs there, it is the reference (`mixed_batches` refuses it where it is not)
    extras = [] if complete else [
        *reference_bindings(before.proto, options, sizes[0], [s.dim for s in judge.samples]),
        *(b for dim in judge.mixed_named() for b in reference_bindings(before.proto, options, sizes[0], [dim]))]
    for extra in extras:
        if LEVELS.index(weakest(dims.values())) >= LEVELS.index("consistent"):
            break
        extra = bind(extra, tied) if tied else extra
        if extra in sizes:
            continue
        run = judge.at(extra, reference_only=True)
        if not run.skipped:
            runs.append(run)
            sizes = [*sizes, extra]
            dims = dim_evidence(runs, sizes[0], judge.probed_dims)
    if after is not before:  # a falsifier, never evidence: see _degenerate
        degenerate = _degenerate(sizes[0], judge.probed_dims, tied)
        run = judge.at(degenerate, reference_only=True) if degenerate not in sizes else None
        if run is not None and not run.skipped:
            runs.append(run)
            sizes = [*sizes, degenerate]
    return _verdict(before, after, sizes, runs, dims, judge, options)


def _degenerate(export: dict[str, int], probed: set[str], tied) -> dict[str, int]:
    """Every probed dim at 1. There every broadcast lines up, so an original whose mask is misaligned at every
    other size (`h[pad] = 0` exported with a lower-rank mask) runs, and runs right: it is the one size where such
    an original can refute a repair (one that swaps Where's branches or negates its condition). It is compared
    only where the original runs as it declares, and earns no level (a coincidence, graphfix.validate.sizes)."""
    binding = {name: 1 if name in probed else size for name, size in export.items()}
    return bind(binding, tied) if tied else binding


def _verdict(before, after, sizes, runs, dims, judge, options) -> Validation:
    subject = "the model" if after is before else "repaired model"
    held = judge.held.problems()  # an axis that stayed at every moved size
    reasons = failure_reasons(runs, subject) + held
    evidence = weakest(dims.values()) if dims else (runs[0].level if runs else "runs")
    if after is not before and not reasons and LEVELS.index(evidence) < LEVELS.index(options.require):
        weak = ", ".join(f"{name}: {level}" for name, level in dims.items() if LEVELS.index(level) <
                         LEVELS.index(options.require)) or f"every size: {evidence}"
        reasons.append(f"evidence '{evidence}' is below the required '{options.require}' ({weak}); "
                       f"give real values with --input, or accept it with --require {evidence}")
    if after is not before and (mixed := judge.mixed_batches(dims)):
        reasons.append(f"the original mixes the samples along '{mixed[0]}' at its export size (a statistic over the "
                       "batch) and no reference reaches other sizes of it: a number computed from that size in "
                       "Python (`/ (N - 1)`) would still hold the export's there; give real values with --input, "
                       "or write it anyway with --force")
    failed = next((run.sizes for run in runs if run.candidate_error and not run.skipped), None)
    if after is not before and failed and (hint := step_hint(after.proto, failed, "repaired graph")):
        reasons.append(hint)  # the rebuilt shapes need a step (`h.view(B, T // 2, 2 * D)`): the sizes to give
    divergence = judge.divergence
    if divergence and divergence.get("tensor"):
        reasons.append(f"first diverging node: '{divergence['node']}' ({divergence['op_type']}), "
                       f"tensor '{divergence['tensor']}': {divergence['problem']}")
    return Validation(not reasons, sizes, runs, reasons, divergence, evidence, dims, options.require,
                      refuted=bool(held) or any(_refuted(run) for run in runs))


def _refuted(run: SizeRun) -> bool:
    """Whether the candidate's failure at `run` says it is wrong: it differs from a reference, breaks a declared
    output, or fails where the original runs. Failing where the original fails too does not: nothing says the
    model takes that size (`x.reshape(B, T // 4, 16)` takes only multiples of 4, and a probe at T = 5 fails in
    PyTorch as well). Nor does an output dim other than a declared int above 1: the TorchScript exporter writes an
    axis left out of `dynamic_axes` as its traced size, which the right repair no longer keeps."""
    unreferenced = run.candidate_error is not None and run.original_error is not None and not run.shape_problems
    traced = run.traced_ints_only and not run.candidate_error and run.derived is not False and all(
        o.ok for o in run.outputs)
    return run.failed and not unreferenced and not traced


def _plain(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python numbers, inf/nan to strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value
