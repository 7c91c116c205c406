"""`graphfix repair`: fix, simplify, prove with onnxruntime, and only then write."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import click

from graphfix.cli.guarded import sweeping
from graphfix.cli.options import (
    OutputPath,
    config_filter,
    config_options,
    current_config,
    fix_options,
    format_option,
    paths_argument,
    probe_inputs,
    require_option,
    rule_inputs,
    rule_options_from,
    rule_selection,
    validation_options_from,
)
from graphfix.core.config import probe_options_for
from graphfix.core.errors import GraphfixError, UsageError
from graphfix.core.forked import run_forked
from graphfix.core.registry import select_rules
from graphfix.io.paths import ModelPath, expand_paths
from graphfix.io.targets import refuse_linked_folders, same_file
from graphfix.io.wire import external_locations
from graphfix.pipeline.batch import portable, warm_up
from graphfix.pipeline.repair import RepairOptions, RepairResult, repair_file
from graphfix.report.text import emit_json, findings_text, printable, printable_path, rejection_line


@click.command("repair")
@paths_argument
@click.option("-o", "--output", type=OutputPath(), help="Output model (one input model).")
@click.option("--output-dir", type=OutputPath(folder=True, file_okay=False),
              help="Output folder; outputs keep their paths relative to each PATH.")
@click.option("--in-place", is_flag=True, help="Replace the input model (the only way to overwrite it).")
@click.option("--dry-run", is_flag=True, help="Repair and validate, but write nothing.")
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim simplification.")
@click.option("--force", is_flag=True, help="Write the result even if validation fails (and say so).")
@format_option
@rule_selection
@fix_options
@rule_inputs
@probe_inputs
@require_option
@config_options
def command(paths, output, output_dir, in_place, dry_run, no_simplify, force, fmt, only, skip, unsafe_fixes,
            expect_outputs, trace_shapes, show_rejected, shapes, input_files, rtol, atol, require) -> int:
    """Repair models: fix what the graph still carries the information for, simplify, validate, write.

    Exit 0 when what was written reached the required evidence at every probe size; 1 when nothing was written
    (validation failed, or error findings remain that no fix addresses; unless --force) or the model, unchanged,
    fails at a probe size; 2 for usage, input and internal errors."""
    if require == "torch":
        raise UsageError("--require torch: repair has no PyTorch module to compare with; use graphfix.export or "
                         "graphfix.verify (Python API), or --require runs|consistent|original")
    models = expand_paths(paths)
    targets = _destinations(models, output, output_dir, in_place, dry_run)
    options = RepairOptions(
        rules=select_rules(only, skip),
        rule_options=rule_options_from(unsafe_fixes=unsafe_fixes, expect_outputs=expect_outputs,
                                       trace_shapes=trace_shapes, several=len(models) > 1),
        simplify=not no_simplify, force=force, dry_run=dry_run, in_place=in_place,
        output_root=output_dir if output is None and not in_place else None,
        validation=validation_options_from(shapes=shapes, input_files=input_files, rtol=rtol, atol=atol,
                                           require=require),
    )
    results: list[dict] = []
    exit_code = 0
    if len(models) > 1:
        warm_up()  # once here, not in every model's child
    for model, target in zip(models, targets, strict=True):
        try:
            select, ignore = config_filter(model.path)
            model_options = dataclasses.replace(
                options,
                rules=[r for r in options.rules if r.code not in ignore and (not select or r.code in select)],
                validation=probe_options_for(current_config(), model.path, options.validation, len(models) > 1),
            )
            result = _repaired(model.path, target, model_options)
        except GraphfixError as exc:
            exit_code = max(exit_code, exc.exit_code)
            results.append({"path": str(model.path), "output": None, "status": "failed", "error": str(exc)})
            if fmt == "text":
                click.echo(f"{printable_path(model.path)}: {click.style('cannot repair', fg='red')}: {printable(exc)}",
                           err=True)
            continue
        if result.status == "failed" or result.error or _has_errors(result) \
                or not (result.validation or {}).get("passed", True):
            exit_code = max(exit_code, 1)
        results.append(result.to_json())
        if fmt == "text":
            _print_result(result, show_rejected)
    if fmt == "json":
        emit_json("models", results)
    return exit_code


def _repaired(path: Path, target: Path | None, options: RepairOptions) -> RepairResult:
    """The repair of one model, done in a forked child (a crash in onnxruntime becomes this model's error, exit 2);
    what comes back is the summary, not the model: the child wrote it."""
    def work() -> RepairResult:
        result = repair_file(path, target, options)
        before, after = (dataclasses.replace(d, findings=[portable(f) for f in d.findings])
                         for d in (result.before, result.after))
        return dataclasses.replace(result, before=before, after=after, light=None, weights={})

    with sweeping():  # what a crashed child left: its scratch folders, its staging beside the output
        return run_forked(work, str(path))


def _destinations(models: list[ModelPath], output, output_dir, in_place, dry_run) -> list[Path | None]:
    chosen = sum(bool(x) for x in (output, output_dir, in_place))
    if chosen > 1:
        raise UsageError("give only one of -o/--output, --output-dir, --in-place")
    if chosen == 0 and not dry_run:
        raise UsageError("say where to write: -o OUT, --output-dir DIR, --in-place, or --dry-run")
    if output is not None and len(models) != 1:
        raise UsageError(f"-o/--output takes one input model ({len(models)} given); use --output-dir")
    if dry_run:
        return [None] * len(models)
    targets = [m.path for m in models] if in_place else [output] if output is not None else \
        [output_dir / m.relative for m in models]
    if output_dir is not None:
        for target in targets:  # all of them before anything is written
            refuse_linked_folders(output_dir, target)
    _refuse_collisions(models, targets)
    return targets


def _refuse_collisions(models: list[ModelPath], targets: list[Path]) -> None:
    """Two models are never written to one file, no model is written where another writes its data (helper 55:
    x's data file `y.onnx` was copied beside x's output, then replaced by y's output after x was validated), and
    no output replaces another input of the run (its own only with --in-place, which check_destination allows)."""
    seen: dict[Path, Path] = {}
    for model, target in zip(models, targets, strict=True):
        where = target.parent.resolve() / target.name
        if where in seen:
            raise UsageError(f"{seen[where]} and {model.path} would both be written to {target}; "
                             "repair them apart or give them different names")
        seen[where] = model.path
        for other in models:
            if other is not model and same_file(target, other.path):
                raise UsageError(f"{target}: would overwrite the input {other.path} (another model of this run)")
    if len(models) < 2:
        return
    for model, target in zip(models, targets, strict=True):
        for data in _data_beside(model.path, target):
            if data in seen and seen[data] != model.path:
                raise UsageError(f"{seen[data]} would be written to {data}, where {model.path} writes its data "
                                 "beside its output; repair them apart or give them different names")


def _data_beside(path: Path, target: Path) -> set[Path]:
    """The data files a repair of `path` may write beside `target`: names derived from the output's own
    (`NAME.data`, `NAME.1.data`...: one per data file the model reads, counted from its wire format, and one more
    while a replaced model still reads the first ones), never the names the model gives them."""
    folder = target.parent.resolve()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return {folder / (target.name + ".data")}  # loading says why it cannot be read
    try:
        info = os.fstat(fd)
        locations = external_locations(fd, info.st_size) if stat.S_ISREG(info.st_mode) else None
    finally:
        os.close(fd)
    count = len(locations or ()) + 1
    return {folder / name for name in [target.name + ".data", *(f"{target.name}.{n}.data" for n in range(1, count))]}


def _has_errors(result: RepairResult) -> bool:
    return any(f.severity.value == "error" for f in result.after.findings)


def _print_result(result: RepairResult, show_rejected: bool) -> None:
    status = {"repaired": "green", "unchanged": "cyan", "failed": "red"}[result.status]
    where = f" -> {printable(result.output)}" if result.output else ""
    click.echo(f"{printable_path(result.path)}: {click.style(result.status, fg=status)}{where}")
    for fix in result.applied:
        click.echo("  " + printable(f"applied {fix.rule} [{', '.join(fix.nodes[:3])}]: {fix.summary}"))
    if result.simplify:
        click.echo(f"  simplify: {printable(result.simplify)}")
    if result.validation is not None:
        _print_validation(result.validation)
    for note in result.notes:
        click.echo(f"  note: {printable(note)}")
    if result.error:
        click.echo(f"  error: {printable(result.error)}")
    if result.after.findings:
        click.echo("  remaining " + findings_text("findings", result.after.findings, None).removeprefix("findings: "))
    if show_rejected:
        for rejection in result.after.rejections:
            click.echo(rejection_line(rejection))


def _print_validation(validation: dict) -> None:
    """`validation: passed at 5 size(s); evidence: batch original, time runs (derived check: matched at 3 sizes)`,
    then a line per size with the evidence obtained there."""
    runs = [run for run in validation.get("runs", []) if not run.get("skipped")]
    failed = validation.get("failed_sizes", 0)
    ran = [run for run in runs if run["candidate"]["ok"]]
    evidence = f"; evidence: {_evidence_text(validation)}" if ran else ""  # none where it ran nowhere
    if validation.get("passed"):
        click.echo(f"  validation: passed at {len(runs)} size(s){evidence}")
    elif failed:
        click.echo(f"  validation: FAILED at {failed} of {len(runs)} size(s){evidence}")
    else:
        click.echo(f"  validation: FAILED{evidence} (required: {validation.get('require')})")
    for run in validation.get("runs", []):
        sizes = " ".join(f"{k}={v}" for k, v in run["sizes"].items()) or "static shapes"
        level = "skipped" if run.get("skipped") else _outcome(run)
        derived = {True: " (derived: matched)", False: " (derived: DIFFERS)"}.get(run.get("derived"), "")
        click.echo(printable(f"    {level:<10} at {sizes}{derived}" + (f": {run['note']}" if run.get("note") else "")))


def _outcome(run: dict) -> str:
    """What a size gave: FAILS (the model did not run), DIFFERS (it ran, and an output or shape is wrong), else the
    evidence level reached there."""
    if not run["candidate"]["ok"]:
        return "FAILS"
    if run.get("shape_problems") or run.get("derived") is False or any(not o["ok"] for o in run.get("outputs", [])):
        return "DIFFERS"
    return run.get("level")


def _evidence_text(validation: dict) -> str:
    """`B original, T runs (derived check: matched at 3 sizes)`: each dim's level, then the derived check, which
    counts toward no level."""
    dims = ", ".join(f"{name} {level}" for name, level in validation.get("dims", {}).items())
    text = dims or str(validation.get("evidence"))
    derived = validation.get("derived") or {}
    matched, differed = derived.get("matched", 0), derived.get("differed", 0)
    if differed:
        text += f" (derived check: DIFFERS at {differed} size(s), matched at {matched})"
    elif matched:
        text += f" (derived check: matched at {matched} size{'' if matched == 1 else 's'})"
    return printable(text)
