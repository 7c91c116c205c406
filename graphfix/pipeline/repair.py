"""The repair pipeline: load → diagnose → fix to a fixpoint → simplify → diagnose again → validate → write.

The output is staged beside its destination and moved into place only once onnxruntime has validated the
result, unless the user forces it. Large weights are never copied (see graphfix.io.weights): the staged file is
written from the input's own tensors, on a second thread, while onnxsim and onnxruntime work.
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

from graphfix.core.context import RuleOptions
from graphfix.core.engine import AppliedFix, Diagnosis, FixOutcome, diagnose_model, fix_model
from graphfix.core.rule import Rule, Severity
from graphfix.io.loading import LoadedModel, load_model
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
from graphfix.pipeline.simplify import OnnxsimChild, simplify
from graphfix.validate.runner import ModelRunner


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
    imports take about as long as loading a BERT-base, and they use the core the load leaves idle."""
    if options.simplify:
        OnnxsimChild.shared()
    return repair_model(load_model(path), output, options)


def repair_model(loaded: LoadedModel, output: Path | None, options: RepairOptions) -> RepairResult:
    """Repair one loaded model and, unless dry-run, write it to `output` once validated.

    onnxruntime's session for the original model is built on a second thread meanwhile: session creation and
    onnxsim's child process leave the interpreter free, so the two overlap with the fixing."""
    if output is not None:
        check_destination(loaded, output, options.in_place)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="graphfix-io") as pool:
        original = pool.submit(_original_runner, loaded) if options.validate else None
        return _repair(loaded, output, options, pool, original)


def _original_runner(loaded: LoadedModel) -> ModelRunner:
    """With external data, from the proto and the data files loading holds (mapped, not copied). Inline, from the
    proto already in memory, its weights fed as arrays that the repaired model's session will share."""
    if loaded.external and loaded.path is not None:
        return ModelRunner(loaded.proto, loaded.base_dir, loaded.path, files=loaded.files)
    light, weights = detach_inline(loaded.proto)
    return ModelRunner(light, loaded.base_dir, path=loaded.path, weights=weights)


def _repair(loaded: LoadedModel, output: Path | None, options: RepairOptions, pool: ThreadPoolExecutor,
            original: Future[ModelRunner] | None) -> RepairResult:
    outcome = fix_model(loaded.proto, loaded.base_dir, options.rules, options.rule_options)
    chose = ""
    if original is not None and any(f.choice is not None for f in outcome.after.findings):
        outcome, options, chose = _choose(loaded, outcome, options, original.result())
    if outcome.changed and not any(f.severity is not Severity.INFO for f in outcome.before.findings):
        # Nothing above INFO: a healthy model goes out as it came, byte for byte, however tidy a fix would make it.
        outcome = dataclasses.replace(outcome, model=loaded.proto, applied=[], after=outcome.before, weights={})
    result = RepairResult(loaded.name, None, "repaired" if outcome.changed else "unchanged", outcome.applied,
                          outcome.before, outcome.after, notes=list(outcome.failures) + [chose] * bool(chose))
    model, result.weights = outcome.model, outcome.weights
    with scratch_dir() as scratch:
        # Without a destination (dry run, Python API) the model is staged in a scratch folder for validation.
        commit = output is not None and not options.dry_run
        destination = output if commit else Path(scratch) / "model.onnx"
        ahead = None  # the weights are written while onnxsim works: they are most of the bytes, and it keeps them
        if outcome.changed and has_stubs(model) and not loaded.external and not needs_external_data(model):
            ahead = pool.submit(stage_weights, destination, model, result.weights)
        try:
            if outcome.changed and options.simplify:
                model, result.simplify = _simplify(model, loaded.base_dir)
                result.after = diagnose_model(model, loaded.base_dir, options.rules, options.rule_options,
                                              result.weights)
            result.light = model
            staging = pool.submit(_stage, model, destination, loaded, outcome.changed, result.weights, ahead)
        except BaseException:
            _discard(ahead)
            raise
        _validate_commit(model, commit, loaded, outcome.changed, options, result, staging, original)
    return result


def _validate_commit(model: onnx.ModelProto, commit: bool, loaded: LoadedModel, changed: bool,
                     options: RepairOptions, result: RepairResult, staging: Future[StagedModel],
                     original: Future[ModelRunner] | None) -> None:
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
                                                         weights=result.weights, fed=before.fed)
            validation = _validate(loaded, before, after, options)
            result.validation = validation.to_json()
            if not validation.passed and not changed:
                # The output is the input model as it came: writing it harms nothing, and a failure with synthesized
                # inputs may be the inputs' fault (values a kernel rejects), so it is written and reported (exit 1).
                result.notes.append(f"unchanged model fails at {validation.failed_sizes or 'every'} probe size(s): "
                                    + "; ".join(validation.reasons)
                                    + " (give real values with --input/--shape; `graphfix diagnose` probes in detail)")
            elif not validation.passed:
                result.status = "failed"
                result.error = "validation failed: " + "; ".join(validation.reasons)
                if not options.force:
                    return
                result.notes.append("written despite failed validation (--force)")
        staged = staging.result()
        if commit:
            result.output = str(staged.commit())
            result.notes.extend(staged.kept)
    finally:
        _discard(staging)  # after a commit there is nothing left to remove


def _stage(model: onnx.ModelProto, destination: Path, loaded: LoadedModel, changed: bool, weights: Weights,
           ahead: Future[StagedModel] | None) -> StagedModel:
    if not changed and loaded.path is not None:
        # the input's own bytes, its external data files beside it: nothing to serialize
        staged = stage_copy(loaded.path, destination, loaded.data_files, loaded.model_file)
    elif ahead is not None:
        started = ahead.result()
        if stub_names(model) == started.prewritten:
            staged = finish_stage(started, model, weights)
        else:
            started.discard()  # onnxsim dropped a weight: the file would keep it, so start over
            staged = stage_model(model, destination, loaded.base_dir, weights)
    else:
        staged = stage_model(model, destination, loaded.base_dir, weights)
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
        return fix_model(loaded.proto, loaded.base_dir, options.rules, rule_options)

    def judge(tried: FixOutcome, picked: dict[str, int]) -> bool:
        candidate = ModelRunner(tried.model, loaded.base_dir, weights=tried.weights, fed=original.fed)
        return _validate(loaded, original, candidate, _with_choices(options, picked)).passed

    chosen, picked, note = choose(outcome, trial, judge)
    return chosen, _with_choices(options, picked) if picked else options, note


def _with_choices(options: RepairOptions, picked: dict[str, int]) -> RepairOptions:
    """Options that build (rules) and re-trace (validation) the repair with these candidates."""
    from graphfix.validate import ValidationOptions

    validation = dataclasses.replace(options.validation or ValidationOptions(), choices=picked)
    return dataclasses.replace(options, rule_options=dataclasses.replace(options.rule_options, choices=picked),
                               validation=validation)


def _simplify(model: onnx.ModelProto, base_dir: Path | None) -> tuple[onnx.ModelProto, str]:
    outcome = simplify(model, base_dir=base_dir)
    return outcome.model, outcome.message or ("simplified with onnxsim" if outcome.applied else "")


def _validate(loaded: LoadedModel, original: ModelRunner, candidate: ModelRunner | Path | None,
              options: RepairOptions):
    """Run the original and the candidate (the original again when nothing changed)."""
    from graphfix.validate import ValidationOptions, validate

    candidate = original if candidate is None else ModelRunner.from_source(candidate)
    validation = options.validation or ValidationOptions()
    traced = trace_sizes(loaded.proto, options.rule_options.trace_shapes)
    if traced and not validation.trace_sizes:  # the export size is the first size validated
        validation = dataclasses.replace(validation, trace_sizes=traced)
    outcome = validate(original, candidate, validation)
    if outcome.passed or candidate is original or validation.trace_sizes:
        return outcome
    # Probed around a guessed export size, the original may have run nowhere: the sizes the graph itself reveals
    # (GF004's evidence) give the reference the guess missed, and, once known, let the original's own run there
    # correct its declarations. Only then: learning them costs an analysis.
    solved = solved_sizes(loaded, options.rule_options)
    if not solved:
        return outcome
    return validate(original, candidate, dataclasses.replace(validation, trace_sizes=solved))


def solved_sizes(loaded: LoadedModel, rule_options: RuleOptions) -> dict[str, int]:
    """Export-time sizes of the input dims, learnt from the original graph (see graphfix.analysis.export_sizes)."""
    from graphfix.analysis.export_sizes import export_sizes
    from graphfix.core.engine import analyse

    ctx = analyse(loaded.proto, loaded.base_dir, rule_options)
    return dict(export_sizes(ctx, ctx.evaluator).values)


def trace_sizes(model: onnx.ModelProto, trace_shapes) -> dict[str, int]:
    """Symbolic dim name -> export-time size, from --trace-shape NAME=2x400 and the inputs' dim names."""
    sizes: dict[str, int] = {}
    for graph_input in model.graph.input:
        shape = trace_shapes.get(graph_input.name)
        dims = graph_input.type.tensor_type.shape.dim
        for dim, size in zip(dims, shape or (), strict=False):
            if dim.dim_param and size is not None:
                sizes.setdefault(dim.dim_param, int(size))
    return sizes

