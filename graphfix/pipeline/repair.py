"""The repair pipeline: load → diagnose → fix to a fixpoint → simplify → diagnose again → validate → write.

The output is staged beside its destination and moved into place only once onnxruntime has validated the
result, unless the user forces it. Large weights are never copied (see graphfix.io.weights): the staged file is
written from the input's own tensors, on a second thread, while onnxsim and onnxruntime work.

A model that still has ERROR findings no applied fix addresses is not written (it would go out as broken as it
came, or half repaired). A repaired model's output dims that were export-time sizes (`[2, 10, 32]` for an output
that follows the input's `[B, S, 32]`) are declared with the symbols they now follow. The export size, when
`--trace-shape` gives it or the graph solves it, is the first size validated: there the repair must equal the
original exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from graphfix.analysis.given_shapes import check_shapes, check_trace_shapes
from graphfix.core.errors import InputError
from graphfix.core.rule import Rule, RuleOptions, Safety, Severity
from graphfix.io.loading import LoadedModel, load_model
from graphfix.io.protos import initializers_as_inputs
from graphfix.io.saving import (
    StagedModel,
    finish_stage,
    needs_external_data,
    protect_inputs,
    stage_copy,
    stage_model,
    stage_weights,
)
from graphfix.io.staging import scratch_dir
from graphfix.io.targets import check_destination
from graphfix.io.weights import Weights, detach_inline, has_stubs, materialize, stub_names
from graphfix.pipeline.choose import choose
from graphfix.pipeline.engine import AppliedFix, Diagnosis, FixOutcome, diagnose_model, fix_model
from graphfix.pipeline.followed_outputs import declare_followed_outputs
from graphfix.pipeline.simplify import OnnxsimChild, simplify
from graphfix.validate.given import check_given
from graphfix.validate.hints import unchanged_failure_note
from graphfix.validate.runner import ModelRunner
from graphfix.validate.sizes import trace_sizes


@dataclass
class RepairOptions:
    rules: list[type[Rule]]
    rule_options: RuleOptions = field(default_factory=RuleOptions)
    simplify: bool = True
    validate: bool = True
    force: bool = False
    dry_run: bool = False
    in_place: bool = False
    validation: Any = None  # graphfix.validate.ValidationOptions; None means defaults
    output_root: Path | None = None  # --output-dir: no folder below it is written through a link


@dataclass
class RepairResult:
    path: str
    output: str | None
    status: str  # repaired | unchanged | failed
    applied: list[AppliedFix]
    before: Diagnosis
    after: Diagnosis
    validation: dict | None = None
    simplify: str = ""
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    light: onnx.ModelProto | None = field(default=None, repr=False)  # the result, large weights as stubs
    weights: Weights = field(default_factory=dict, repr=False)  # what the stubs stand for

    @functools.cached_property
    def model(self) -> onnx.ModelProto | None:
        """The repaired model as one full proto, built on first use (it copies every weight)."""
        return None if self.light is None else materialize(self.light, self.weights)

    @property
    def findings_before(self):
        return self.before.findings

    @property
    def findings_after(self):
        return self.after.findings

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "output": self.output,
            "status": self.status,
            "applied": [a.to_json() for a in self.applied],
            "findings_before": [f.to_json() for f in self.before.findings],
            "findings_after": [f.to_json() for f in self.after.findings],
            "simplify": self.simplify,
            "validation": self.validation,
            "notes": self.notes,
            "error": self.error,
        }


def repair_file(path: Path, output: Path | None, options: RepairOptions) -> RepairResult:
    """Load and repair one model file. onnxsim's process (one per process, see OnnxsimChild) starts first: its
    imports take about as long as loading a BERT-base, and they use the core the load leaves idle. In a worker
    the model is parsed light (graphfix.io.mapped)."""
    if options.simplify:
        OnnxsimChild.shared()
    return repair_model(load_model(path, light=True), output, options)


def repair_model(loaded: LoadedModel, output: Path | None, options: RepairOptions) -> RepairResult:
    """Repair one loaded model and, unless dry-run, write it to `output` once validated.

    onnxruntime's session for the original model is built on a second thread meanwhile: session creation and
    onnxsim's child process leave the interpreter free, so the two overlap with the fixing."""
    if output is not None:
        check_destination(loaded, output, options.in_place)
    check_trace_shapes(loaded.proto, options.rule_options)
    if (checks := options.validation) is not None:  # before any work: a typo is no input
        check_shapes(loaded.proto, checks.shapes, optional=checks.configured)
        cast = check_given(loaded.proto, checks.inputs)  # once: every probe size feeds them as they are
        options = dataclasses.replace(options, validation=dataclasses.replace(checks, inputs=cast))
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="graphfix-io") as pool:
        original = pool.submit(_original_runner, loaded) if options.validate else None
        return _repair(loaded, output, options, pool, original)


def _unsafe_applied(outcome) -> bool:
    """Whether a fix marked unsafe was applied (only ever at the user's request, `--unsafe-fixes`)."""
    unsafe = {(f.rule, tuple(f.nodes), f.fix.summary) for f in outcome.before.findings
              if f.fix is not None and f.fix.safety is Safety.UNSAFE}
    return any((a.rule, tuple(a.nodes), a.summary) in unsafe for a in outcome.applied)


def _original_runner(loaded: LoadedModel) -> ModelRunner:
    """With external data, from the proto and the data files loading holds (mapped, not copied). Inline, its weights
    fed as arrays that the repaired model's session will share (views of the mapped file, parsed light)."""
    if loaded.external and loaded.path is not None:  # its large inline weights are mapped too, if any
        return ModelRunner(loaded.proto, loaded.base_dir, loaded.path, weights=loaded.weights, files=loaded.files)
    light, weights = detach_inline(loaded.proto)  # a model parsed light has its stubs' weights already
    return ModelRunner(light, loaded.base_dir, path=loaded.path, weights={**loaded.weights, **weights})


def _repair(loaded: LoadedModel, output: Path | None, options: RepairOptions, pool: ThreadPoolExecutor,
            original: Future[ModelRunner] | None) -> RepairResult:
    outcome = fix_model(loaded.proto, loaded.base_dir, options.rules, options.rule_options,
                        solve=original is not None, weights=loaded.weights)
    if original is not None and (outcome.changed or any(f.choice is not None for f in outcome.after.findings)):
        # the export size is validated first, and exactly
        options = _with_export_sizes(loaded, options, outcome.solved)
    moved = frozenset().union(*(a.moves for a in outcome.applied))
    if moved and options.validation is not None:  # the original is no reference away from their export sizes
        options = dataclasses.replace(options, validation=dataclasses.replace(options.validation, moved=moved))
    chose = ""
    if original is not None and any(f.choice is not None for f in outcome.after.findings):
        outcome, options, chose = _choose(loaded, outcome, options, original.result())
    if outcome.changed and not any(f.severity is not Severity.INFO for f in outcome.before.findings) \
            and not _unsafe_applied(outcome):
        # Nothing above INFO: a healthy model goes out as it came, byte for byte, however tidy a fix would make it
        # (unless the user asked for an unsafe fix of a note: a sinusoidal table's rows grown past its length).
        outcome = dataclasses.replace(outcome, model=loaded.proto, applied=[], after=outcome.before,
                                      weights=dict(loaded.weights))
    result = RepairResult(loaded.name, None, "repaired" if outcome.changed else "unchanged", outcome.applied,
                          outcome.before, outcome.after, notes=list(outcome.failures) + [chose] * bool(chose))
    unaddressed = unaddressed_errors(outcome.after)
    if unaddressed and not options.force:  # `unchanged` still says that no fix applied; nothing is written
        result.status = "failed" if outcome.changed else result.status
        result.error, result.light, result.weights = unaddressed, outcome.model, outcome.weights
        return result
    if unaddressed:
        result.notes.append(f"written despite {unaddressed.removeprefix('not written: ')} (--force)")
    model, result.weights = outcome.model, outcome.weights
    with scratch_dir() as scratch:
        # Without a destination (dry run, Python API) the model is staged in a scratch folder for validation.
        commit = output is not None and not options.dry_run
        destination = output if commit else Path(scratch) / "model.onnx"
        within = options.output_root if commit else None
        ahead = None  # the weights are written while onnxsim works: they are most of the bytes, and it keeps them
        if outcome.changed and has_stubs(model) and not loaded.external and not needs_external_data(model):
            ahead = pool.submit(stage_weights, destination, model, result.weights, within)
        try:
            if outcome.changed and options.simplify:
                model, result.simplify = _simplify(model, loaded.base_dir)
                result.after = diagnose_model(model, loaded.base_dir, options.rules, options.rule_options,
                                              result.weights)
            shapes = None  # the repaired outputs' inferred shapes, where declaring them inferred them
            if outcome.changed and options.validation is not None:
                model, declared, shapes = declare_followed_outputs(model, _export_of(options.validation), loaded.proto)
                result.notes += declared
            result.light = model
            staging = pool.submit(_stage, model, destination, loaded, outcome.changed, result.weights, ahead, commit,
                                  within)
        except BaseException:
            _discard(ahead)
            raise
        _validate_commit(model, commit, loaded, outcome.changed, options, result, staging, original, shapes)
    return result


def _validate_commit(model: onnx.ModelProto, commit: bool, loaded: LoadedModel, changed: bool,
                     options: RepairOptions, result: RepairResult, staging: Future[StagedModel],
                     original: Future[ModelRunner] | None, shapes: dict[str, list | None] | None = None) -> None:
    """The repaired model is validated in memory (an inline one while the output is written on the other thread).
    Its weights are the original's: inline ones fed from the arrays the original's session uses, external ones
    mapped from the data files loading holds (the pages the original's session maps, not the staged copy: one
    copy of the weights, #23)."""
    try:
        if loaded.external:  # its data files are copied first: runs that shared the disk and cores with that copy
            staging.result()  # could pass the run budget on a busy machine
        if original is not None:  # an unchanged model is its own candidate: one session, not two
            before = original.result()
            after = None if not changed else ModelRunner(model, loaded.base_dir, files=loaded.files,
                                                         weights=result.weights, fed=before.fed, deployed=True,
                                                         output_shapes=shapes)
            validation = _validate(loaded, before, after, options)
            result.validation = validation.to_json()
            if not validation.passed and not changed:
                # The output is the input model as it came: writing it harms nothing, and a failure with synthesized
                # inputs may be the inputs' fault (values a kernel rejects), so it is written and reported (exit 1).
                result.notes.append(unchanged_failure_note(loaded.proto, validation,
                                                           options.validation and options.validation.shapes))
            elif not validation.passed:
                result.status = "failed"
                result.error = "validation failed: " + "; ".join(validation.reasons)
                if not options.force:
                    return
                result.notes.append("written despite failed validation (--force)")
        staged = staging.result()
        if commit:
            if changed := loaded.changed_file():  # bytes the proof never saw would go out
                raise InputError(f"{loaded.name}: {changed.path} changed while it was repaired; nothing written")
            result.output = str(staged.commit())
            result.notes.extend(staged.kept)
    finally:
        _discard(staging)  # after a commit there is nothing left to remove


def _stage(model: onnx.ModelProto, destination: Path, loaded: LoadedModel, changed: bool, weights: Weights,
           ahead: Future[StagedModel] | None, durable: bool, within: Path | None = None) -> StagedModel:
    """The output staged beside its destination and, to be committed, written back to disk here, beside validation
    (commit's fsyncs then find nothing to write: 0.2-0.4 s less on BERT-base, #23; a failed sync discards it)."""
    staged = _staged(model, destination, loaded, changed, weights, ahead, within)
    return staged.sync() if durable else staged


def _staged(model: onnx.ModelProto, destination: Path, loaded: LoadedModel, changed: bool, weights: Weights,
            ahead: Future[StagedModel] | None, within: Path | None) -> StagedModel:
    if not changed and loaded.model_file is not None:  # read from a file (an in-memory model's path is made up)
        # the input's own bytes, its data files copied under the output's names: no weight is serialized
        staged = stage_copy(loaded.path, destination, loaded.data_files, loaded.model_file, within)
    elif ahead is not None:
        started = ahead.result()
        if stub_names(model) == started.prewritten:
            staged = finish_stage(started, model, weights)
        else:
            started.discard()  # onnxsim dropped a weight: the file would keep it, so start over
            staged = stage_model(model, destination, loaded.base_dir, weights, within)
    else:
        staged = stage_model(model, destination, loaded.base_dir, weights, within)
    return protect_inputs(staged, loaded)


def _discard(staging: Future[StagedModel] | None) -> None:
    """Remove the staged files of a write whose outcome no longer matters (nothing if it failed)."""
    if staging is None:
        return
    with contextlib.suppress(Exception):
        staging.result().discard()


def _choose(loaded: LoadedModel, outcome: FixOutcome, options: RepairOptions,
            original: ModelRunner) -> tuple[FixOutcome, RepairOptions, str]:
    """The proof chooses among the candidates of findings that report a Choice (graphfix.pipeline.choose)."""
    def trial(picked: dict[str, int]) -> FixOutcome:
        rule_options = dataclasses.replace(options.rule_options, choices=picked)
        return fix_model(loaded.proto, loaded.base_dir, options.rules, rule_options, weights=loaded.weights)

    def judge(tried: FixOutcome, picked: dict[str, int]):  # -> graphfix.validate.Validation
        model, shapes = tried.model, None
        if options.validation is not None:
            model, _, shapes = declare_followed_outputs(model, _export_of(options.validation))
        candidate = ModelRunner(model, loaded.base_dir, weights=tried.weights, fed=original.fed, output_shapes=shapes)
        return _validate(loaded, original, candidate, _with_choices(options, picked))

    chosen, picked, note = choose(outcome, trial, judge, unsafe=options.rule_options.unsafe_fixes)
    return chosen, _with_choices(options, picked) if picked else options, note


def _with_choices(options: RepairOptions, picked: dict[str, int]) -> RepairOptions:
    """Options that build (rules) and re-trace (validation) the repair with these candidates."""
    from graphfix.validate import ValidationOptions

    validation = dataclasses.replace(options.validation or ValidationOptions(), choices=picked)
    return dataclasses.replace(options, rule_options=dataclasses.replace(options.rule_options, choices=picked),
                               validation=validation)


def unaddressed_errors(after: Diagnosis) -> str:
    """'not written: ...' naming the ERROR findings left once every fix was applied, or '' when none is left."""
    errors = [f for f in after.findings if f.severity is Severity.ERROR]
    if not errors:
        return ""
    named = "; ".join(f"{f.rule} at {', '.join(repr(n) for n in f.nodes[:2]) or 'the model'}" for f in errors[:3])
    more = f" and {len(errors) - 3} more" if len(errors) > 3 else ""
    why = next((f"; {f.rule}'s fix at {f.nodes[0]!r} is unsafe because {f.fix.reason}" for f in errors
                if f.fix is not None and f.fix.safety is Safety.UNSAFE and f.fix.reason and f.nodes), "")
    return (f"not written: {len(errors)} error finding(s) that no applied fix addresses ({named}{more}){why}; "
            "`graphfix diagnose` says why each has no safe fix (--unsafe-fixes, --trace-shape may give one)")


def _export_of(validation) -> dict[str, int]:
    """The export-time sizes known to the proof: given, over solved."""
    return {**validation.solved_sizes, **validation.trace_sizes}


def _with_export_sizes(loaded: LoadedModel, options: RepairOptions, solved: dict[str, int]) -> RepairOptions:
    """Options whose validation starts at the export size: `--trace-shape`'s, over what the graph solves
    (`solved`, from the original's analysis: see fix_model)."""
    from graphfix.validate import ValidationOptions

    validation = options.validation or ValidationOptions()
    if validation.trace_sizes or validation.solved_sizes:
        return options
    given = trace_sizes(loaded.proto, options.rule_options.trace_shapes)
    # solved sizes are trusted only where the original runs at them (graphfix.validate)
    solved = {name: size for name, size in solved.items() if name not in given}
    if not (given or solved):
        return options
    return dataclasses.replace(options, validation=dataclasses.replace(validation, trace_sizes=given,
                                                                       solved_sizes=solved))


def _simplify(model: onnx.ModelProto, base_dir: Path | None) -> tuple[onnx.ModelProto, str]:
    outcome = simplify(model, base_dir=base_dir)
    message = outcome.message or ("simplified with onnxsim" if outcome.applied else "")
    return initializers_as_inputs(outcome.model), message


def _validate(loaded: LoadedModel, original: ModelRunner, candidate: ModelRunner | Path | None,
              options: RepairOptions):
    """Run the original and the candidate (the original again when nothing changed)."""
    from graphfix.validate import ValidationOptions, validate

    candidate = original if candidate is None else ModelRunner.from_source(candidate)
    validation = options.validation or ValidationOptions()
    traced = trace_sizes(loaded.proto, options.rule_options.trace_shapes)
    if traced and not validation.trace_sizes:  # the export size is the first size validated
        validation = dataclasses.replace(validation, trace_sizes=traced)
    return validate(original, candidate, validation)
