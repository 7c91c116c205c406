"""Judging one probe size: run both models, pick the strongest independent reference there, compare, and say
which; then check the rewrite against the original re-traced (`derived`).

Levels, weakest first: `runs` < `consistent` < `original` < `torch` (see graphfix.validate). Each counts only a
reference that graphfix's own analysis did not build. A dim's evidence is the strongest level reached at a size
where that dim is away from its export size and no coincidence holds (`coincidence` in graphfix.validate.sizes);
the model's is its weakest dim's. The derived check never raises a level: it shows that the rewrite implements its
analysis, not that the analysis is right, and a difference there fails validation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphfix.analysis.broadcast import batch_named
from graphfix.analysis.shapes import infer_shapes
from graphfix.validate.bisect import first_divergence
from graphfix.validate.compare import (
    OutputComparison,
    ShapeOracle,
    declared_shapes,
    drop_contradicted,
    evaluate_dim,
    possible_shapes,
)
from graphfix.validate.consistency import MIXED, Samples, independent_samples
from graphfix.validate.graph_sizes import declared_sizes, dim_names, graph_inputs, met_sizes
from graphfix.validate.held_sizes import HeldSizes
from graphfix.validate.inputs import LEVELS, synthesize_inputs
from graphfix.validate.minimum import KERNEL_OPS, emptied_at, runs_with_its_batch
from graphfix.validate.references import DerivedReference, OriginalReference, Probe, SamplesReference
from graphfix.validate.retrace import Retracer
from graphfix.validate.runner import failing_node, short_message
from graphfix.validate.sizes import batch_dims, coincidence, forced_sizes, is_smaller


@dataclass
class SizeRun:
    """What happened at one binding of the symbolic dims."""

    sizes: dict[str, int]
    original_error: str | None
    candidate_error: str | None
    level: str = "runs"  # the evidence obtained here
    outputs: list[OutputComparison] = field(default_factory=list)  # against the reference of `level`
    candidate_shapes: dict[str, list[int]] = field(default_factory=dict)
    shape_problems: list[str] = field(default_factory=list)
    note: str = ""
    skipped: bool = False  # outside the model's range (both fail below a minimum size): no evidence, no failure
    derived: bool | None = None  # matched the original re-traced here; None: no re-trace here
    derived_outputs: list[OutputComparison] = field(default_factory=list)  # its comparisons, kept when one differs
    traced_ints_only: bool = False  # every shape problem is against a declared int that may be a traced size

    @property
    def failed(self) -> bool:
        return not self.skipped and bool(self.candidate_error or self.shape_problems
                                         or self.derived is False or any(not o.ok for o in self.outputs))

    @property
    def failure(self) -> str:
        """Where and why the candidate failed, in short: `node '/Reshape' (Reshape): <onnxruntime's message>`."""
        where = failing_node(self.candidate_error or "")
        node = f"node '{where[1]}' ({where[0]})" if where else "the model"
        return f"{node}: {short_message(self.candidate_error or '')}"

    def reasons(self, subject: str) -> list[str]:
        if self.skipped:
            return []
        at = f"at sizes {self.sizes}"
        if self.candidate_error is not None:
            return [f"{subject} fails {at}: {self.failure}"]
        against = "the original run sample by sample" if self.level == "consistent" else "the original"
        lines = [f"output '{o.name}' differs from {against} {at}: {o.problem}" for o in self.outputs if not o.ok]
        lines += [f"output '{o.name}' differs from the original re-traced {at} (derived check: the rewrite does not "
                  f"implement its own analysis): {o.problem}" for o in self.derived_outputs if not o.ok]
        return lines + [f"{problem} {at}" for problem in self.shape_problems]

    def to_json(self) -> dict[str, Any]:
        return {
            "sizes": dict(self.sizes),
            "level": None if self.skipped else self.level,
            "skipped": self.skipped,
            "original": {"ok": self.original_error is None, "error": self.original_error},
            "candidate": {"ok": self.candidate_error is None, "error": self.candidate_error},
            "outputs": [o.to_json() for o in self.outputs],
            "candidate_shapes": self.candidate_shapes,
            "shape_problems": list(self.shape_problems),
            "derived": self.derived,
            "note": self.note,
        }


def failure_reasons(runs: list[SizeRun], subject: str) -> list[str]:
    """Each run's reasons, in order, where the failures at one node are one line that lists their sizes (the
    first size's message): `fails at sizes {...}, {...} and {...}: node '/Reshape' (Reshape): ...`."""
    lines: list[str | tuple[str, str]] = []
    failed: dict[tuple[str, str], list[SizeRun]] = {}
    for run in runs:
        where = failing_node(run.candidate_error) if run.candidate_error and not run.skipped else None
        if where is None:
            lines += run.reasons(subject)
            continue
        if where not in failed:
            lines.append(where)
        failed.setdefault(where, []).append(run)
    return [line if isinstance(line, str) else _failed_at(failed[line], subject) for line in lines]


def _failed_at(runs: list[SizeRun], subject: str) -> str:
    sizes = [str(run.sizes) for run in runs]
    listed = sizes[0] if len(sizes) == 1 else ", ".join(sizes[:-1]) + " and " + sizes[-1]
    return f"{subject} fails at sizes {listed}: {runs[0].failure}"


def weakest(levels) -> str:
    levels = list(levels)
    return min(levels, key=LEVELS.index) if levels else "runs"


def dim_evidence(runs: list[SizeRun], export: dict[str, int], dims: set[str]) -> dict[str, str]:
    """Each probed dim -> the strongest level reached where it is away from its export size ('runs' if none)."""
    evidence = {}
    for name in export:
        if name not in dims:
            continue
        levels = [run.level for run in runs if not run.skipped and run.sizes.get(name) != export[name]]
        evidence[name] = max(levels, key=LEVELS.index) if levels else "runs"
    return evidence


def derived_summary(runs: list[SizeRun]) -> dict[str, int]:
    """How many sizes the derived check matched and how many it differed at."""
    checked = [run.derived for run in runs if not run.skipped and run.derived is not None]
    return {"matched": checked.count(True), "differed": checked.count(False)}


def following_repair(original: dict[str, list | None], repaired: dict[str, list | None],
                     export: dict[str, int]) -> dict[str, list | None]:
    """The original's declared output dims, where a declared int is an export-time size that the repaired model
    no longer declares (graphfix.pipeline.repair declares the symbol it now follows): the repaired model's dim,
    a symbol or nothing, is the promise, not the int. A size computed from them (`T - 1` at 4) is one too: the
    exporter writes the traced size of every axis left out of `dynamic_axes` (helper 138)."""
    sizes = {size for size in export.values() if size > 1}

    def follows(declared, now) -> bool:
        return isinstance(declared, int) and now != declared and (
            declared in sizes or (isinstance(now, str) and evaluate_dim(now, export) == declared))
    followed = {}
    for name, dims in original.items():
        new = repaired.get(name)
        if dims is None or new is None or len(new) != len(dims):
            followed[name] = dims
            continue
        followed[name] = [n if follows(d, n) else d for d, n in zip(dims, new, strict=True)]
    return followed


class Judge:
    """Runs the original and the candidate at a binding and compares them against the best reference there.
    `known`: the export size was given or solved, not guessed: where the original runs there, the candidate must
    equal it exactly (a misaligned broadcast fails at its own export size too: then it is no reference)."""

    def __init__(self, before, after, options, export: dict[str, int], known: bool = False,
                 derived_dims: set[str] = frozenset(), aliases: dict[str, set[str]] | None = None):
        self.before, self.after, self.options, self.export, self.known = before, after, options, export, known
        self.declared = possible_shapes(before.proto)  # what the original's own outputs are checked against
        # what the candidate is held to: an export-time size the repair now computes is no promise
        self.promises = following_repair(self.declared, declared_shapes(after.proto), export)
        # once, not per dim: each reads every dim of every input (5000 dims: 25M regex searches, 47 s). A batch dim
        # is an input's dim: it has the axes `batch_axes` finds
        batch, forced = batch_dims(before.proto), forced_sizes(before.proto, options)
        self.batch = [name for name in export if name in batch and name not in forced]
        self.probed_dims = set(export) - set(forced)
        self.derived_dims = set(derived_dims)  # computed from other dims (tied): they may equal them
        self.aliases = aliases or {}  # a dim -> the input dims the model ties equal to it (`y + x`: By is B)
        self.static = met_sizes(before.proto)
        self.export_shapes: dict[str, list[int]] = {}  # the original's output shapes at the export size
        self.divergence: dict | None = None
        self.not_samples: list[str] = []  # why a candidate batch dim gives no reference
        self.mixed: set[str] = set()  # batch dims the original is shown to mix samples along (not just unshown)
        self.retracer = Retracer(before, options.choices)
        # output axes held at an input dim's export size (learnt at a known export size only)
        self.held = HeldSizes(self.declared, self.probed_dims - set(self.batch) - self.derived_dims,
                              declared_sizes(before.proto))

    @functools.cached_property
    def samples(self) -> list[Samples]:
        """The batch dims along which the original is shown to compute samples independently: tried at the export
        size, or with that dim at 2 where its export size is 1."""
        found, aliased = [], {alias for names in self.aliases.values() for alias in names}
        for batch in (name for name in self.batch if name not in aliased):  # an alias's samples move with its dim's
            binding = {**self.export, batch: max(self.export[batch], 2)}
            binding.update({alias: binding[batch] for alias in self.aliases.get(batch, ()) if alias in binding})
            where = "its export size" if self.known else f"the size taken for its export ({binding})"
            trial = independent_samples(self.before, self.feeds(binding), batch, self.options.rtol,
                                        self.options.atol, where, self.aliases.get(batch, ()))
            if isinstance(trial, Samples):
                found.append(trial)
            else:
                self.not_samples.append(trial)
                if MIXED in trial:
                    self.mixed.add(batch)
        return found

    def mixed_batches(self, dims: dict[str, str]) -> list[str]:
        """The dims named like a batch that the original mixes samples along at its export size (a statistic over
        the batch: `o - o.mean(0)`, a covariance `z.T @ z / (N - 1)`) and that no reference reached: the repaired
        model runs at other batch sizes unchecked, and a number computed there from the batch in Python (`N - 1`:
        a form of 2 or 3 is every model's own, and not read as an echo) would not show (helper 116)."""
        return [name for name in self.mixed_named() if dims.get(name) == "runs"]

    def mixed_named(self) -> list[str]:
        """The dims named like a batch that the original mixes samples along (a leading time axis mixes too,
        but is no batch: it is moved with no other)."""
        named = {name for vi in graph_inputs(self.before.proto) for name in batch_named(dim_names(vi))}
        return sorted(name for name in self.mixed if name in named)

    @functools.cached_property
    def fixed_outputs(self) -> dict[str, list | None]:
        """The original's output dims as onnx's shape inference of its own graph gives them (a size its graph
        fixes is an int there)."""
        return declared_shapes(infer_shapes(self.before.proto))

    @functools.cached_property
    def inferred(self) -> ShapeOracle:
        return ShapeOracle(self.after.proto, self.after.output_shapes)

    @functools.cached_property
    def promised(self) -> ShapeOracle:
        return ShapeOracle(self.before.proto, self.promises, says="the original declares")

    @functools.cached_property
    def promised_symbols(self) -> ShapeOracle:
        """The promises without their ints above 1: the TorchScript exporter writes every axis left out of
        `dynamic_axes` as its traced size, so such an int may be the export size a repair now follows."""
        symbols = {name: None if dims is None else [None if isinstance(d, int) and d > 1 else d for d in dims]
                   for name, dims in self.promises.items()}
        return ShapeOracle(self.before.proto, symbols, says="the original declares")

    def feeds(self, binding: dict[str, int]) -> dict[str, np.ndarray]:
        """Inputs for both models: the original's, plus any input only the candidate declares."""
        feeds = synthesize_inputs(self.after.proto, binding, self.options) if self.after is not self.before else {}
        feeds.update(synthesize_inputs(self.before.proto, binding, self.options))
        return feeds

    @functools.cached_property
    def original(self) -> OriginalReference:
        return OriginalReference(self.declared, self.export_shapes, lambda: self.fixed_outputs, self.before)

    @functools.cached_property
    def by_samples(self) -> SamplesReference:
        return SamplesReference(self.before, lambda: self.samples, lambda: self.not_samples, self.export,
                                self.declared)

    @functools.cached_property
    def derived(self) -> DerivedReference:
        return DerivedReference(self.retracer, self.promises)

    def at(self, binding: dict[str, int], *, at_export: bool = False, reference_only: bool = False) -> SizeRun:
        feeds = self.feeds(binding)
        actual = self.after.run(feeds)
        expected = actual if self.after is self.before else self.before.run(feeds)
        run = SizeRun(binding, expected.error, actual.error)
        exact = at_export and self.known and self.after is not self.before
        if at_export and expected.ok:
            self.export_shapes.update({name: list(np.shape(v)) for name, v in expected.outputs.items()})
            self._drop_wrong_declarations(expected.outputs, binding)
            if self.known:
                self.held.learn(expected.outputs, binding)
        if not actual.ok:
            self._outside_range(run, reference_only, feeds)
            return run
        run.candidate_shapes = {k: list(np.shape(v)) for k, v in actual.outputs.items()}
        run.shape_problems = self.promised.mismatches(actual.outputs, binding)
        run.traced_ints_only = bool(run.shape_problems) and not self.promised_symbols.mismatches(actual.outputs,
                                                                                                  binding)
        self.held.watch(actual.outputs, binding)
        if self.after is self.before:
            run.level = "original"  # nothing changed: the model is its own original
            return run
        probe = Probe(binding, feeds, expected, actual.outputs, exact=exact)
        if not self._compare(run, probe):
            run.shape_problems += self.inferred.mismatches(actual.outputs, binding)
        if not (at_export and self.known):  # at a known export size the re-traced original is the original
            self._derived(run, probe)
            self._no_evidence_by_coincidence(run, binding)
        if reference_only and run.level == "runs" and not run.outputs and not run.failed:
            run.skipped, run.note = True, "no reference here; the size was not counted"
        return run

    def _compare(self, run: SizeRun, probe: Probe) -> bool:
        """Compare with the first independent reference there is here (the original, then its samples) and take
        its level; False, with the reasons in the note, when there is none."""
        why_not = []
        moved = [d for d in sorted(self.options.moved) if d in self.export and probe.binding.get(d) != self.export[d]]
        if moved:  # a fix changed what the original computes there, where it runs (positions baked at export)
            run.note = (f"values not compared, no reference: an applied fix changes what the original computes "
                        f"where {', '.join(moved)} {'differs' if len(moved) == 1 else 'differ'} from the export's")
            return False
        for reference_ in (self.original, self.by_samples):
            expected = reference_.expect(probe)
            if isinstance(expected, str):
                why_not.append(expected)
                continue
            run.outputs = expected.compare(probe.actual, self.options.rtol, self.options.atol)
            run.level = reference_.level if expected.evidence else "runs"
            run.note = "; ".join(dict.fromkeys(filter(None, [*why_not[:1], expected.note])))
            if reference_ is self.original:
                self._bisect(run, probe.feeds)
            return True
        run.note = "values not compared, no reference: " + "; ".join(dict.fromkeys(n for n in why_not if n))
        return False

    def _no_evidence_by_coincidence(self, run: SizeRun, binding: dict[str, int]) -> None:
        """A size where the original may run by coincidence is still compared, but earns no level."""
        why = coincidence(self.before.proto, binding, self.probed_dims, self.derived_dims, self.static, self.export)
        if why and run.level != "runs":
            against = "the original" if run.level == "original" else "the original sample by sample"
            run.level = "runs"
            said = f"compared with {against}, but no evidence here: a coincidence is possible ({why})"
            run.note = "; ".join(filter(None, [run.note, said]))

    def _derived(self, run: SizeRun, probe: Probe) -> None:
        """The derived check: the candidate against the original re-traced here, where there is one. It never sets
        the level."""
        expected = self.derived.expect(probe)
        if isinstance(expected, str):
            return
        comparisons = expected.compare(probe.actual, self.options.rtol, self.options.atol)
        run.derived = all(c.ok for c in comparisons)
        run.derived_outputs = [] if run.derived else comparisons

    def _drop_wrong_declarations(self, outputs: dict[str, np.ndarray], binding: dict[str, int]) -> None:
        for declared in (self.declared, self.promises):
            drop_contradicted(declared, outputs, binding, self.options.trace_sizes)

    def _outside_range(self, run: SizeRun, reference_only: bool, feeds: dict[str, np.ndarray]) -> None:
        """Both fail at the same kernel (Conv, Pool, a reflecting Pad), or at a node that reads nothing where a
        window above it is short (`minimum.emptied_at`), below the export size: the model's minimum size, not a
        failed repair. Not any other op: a Gather whose index a trace baked (`x[:, T - 1]`) fails below the export
        size in both, and PyTorch runs there (helper 57)."""
        where = failing_node(run.original_error) if run.original_error is not None else None
        below = is_smaller(run.sizes, self.export, set(self.batch))
        same = where is not None and where == failing_node(run.candidate_error or "") and (
            where[0] in KERNEL_OPS or (below and emptied_at(self.before, where[1], feeds, self.feeds(self.export))))
        if self.after is not self.before and ((same and below) or (reference_only and run.original_error)):
            run.skipped = True
            run.note = "both models fail at the same node below the export size (the model's minimum size)"
        elif self.after is self.before and self._below_a_kernel(run, feeds):
            run.skipped = True
            run.note = "a kernel fails, or a node reads what a window emptied, below the export size (the model's " \
                "minimum size, as diagnose takes it)"

    def _below_a_kernel(self, run: SizeRun, feeds: dict[str, np.ndarray]) -> bool:
        """An unchanged model's kernel (Conv, Pool, a reflecting Pad), or a node that reads nothing where a window
        above it is short (`minimum.emptied_at`), failing below the export size, where that size's batch runs at the
        export's lengths: an input shorter than the kernel (graphfix.validate.minimum)."""
        where = failing_node(run.candidate_error or "")
        return bool(where and is_smaller(run.sizes, self.export, batch_dims(self.before.proto))
                    and (where[0] in KERNEL_OPS or emptied_at(self.before, where[1], feeds, self.feeds(self.export)))
                    and runs_with_its_batch(self.before, self.before.proto, run.sizes, self.export, self.options,
                                            None))

    def _bisect(self, run: SizeRun, feeds) -> None:
        if self.divergence is None and any(not o.ok for o in run.outputs):
            self.divergence = first_divergence(self.before, self.after, feeds, self.options.rtol, self.options.atol)
