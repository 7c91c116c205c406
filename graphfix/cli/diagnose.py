"""`graphfix diagnose PATH...`: findings for each model, static and (unless --static) at run time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from graphfix.cli.guarded import sweeping
from graphfix.cli.options import (
    config_filter,
    config_options,
    current_config,
    fail_on_option,
    format_option,
    paths_argument,
    probe_inputs,
    rule_inputs,
    rule_options_from,
    rule_selection,
    validation_options_from,
)
from graphfix.core.config import filter_findings, probe_options_for
from graphfix.core.forked import Crashed, run_forked
from graphfix.core.registry import select_rules
from graphfix.io.paths import expand_paths
from graphfix.pipeline.batch import portable, warm_up
from graphfix.pipeline.diagnose import ModelReport, diagnose_path
from graphfix.report.text import emit_json, fails, findings_text, rejection_line


@click.command("diagnose")
@paths_argument
@format_option
@fail_on_option
@click.option("--static", is_flag=True, help="Graph analysis only: no onnxruntime, external weights never read.")
@rule_selection
@rule_inputs
@probe_inputs
@config_options
def command(paths, fmt, fail_on, static, only, skip, expect_outputs, trace_shapes, show_rejected,
            shapes, input_files, rtol, atol) -> int:
    """Report what will break each model at deployment, naming node, cause and fix."""
    rules = select_rules(only, skip)
    models = expand_paths(paths)
    options = rule_options_from(static=static, expect_outputs=expect_outputs, trace_shapes=trace_shapes,
                                several=len(models) > 1)
    probing = None if static else validation_options_from(shapes=shapes, input_files=input_files, rtol=rtol,
                                                          atol=atol)
    config = current_config()
    reports = []
    if len(models) > 1:
        warm_up()  # once here, not in every model's child
    for model in models:
        model_probing = None if probing is None else probe_options_for(config, model.path, probing, len(models) > 1)
        report = _diagnosed(model.path, rules, options, model_probing)
        report.findings = filter_findings(report.findings, *config_filter(model.path))
        reports.append(report)
    if fmt == "json":
        emit_json("models", [r.to_json(show_rejected) for r in reports])
    else:
        for report in reports:
            click.echo(findings_text(report.path, report.findings, report.error), err=bool(report.error))
            if show_rejected:
                for rejection in report.rejections:
                    click.echo(rejection_line(rejection))
    if any(r.error for r in reports):
        return max(r.exit_code for r in reports)
    return 1 if any(fails(r.findings, fail_on) for r in reports) else 0


def _diagnosed(path: Path, rules, options, probing) -> ModelReport:
    """The model's report, made in a forked child: a crash in onnxruntime becomes this model's error (exit 2)."""
    def work() -> ModelReport:
        report = diagnose_path(path, rules, options, probing)
        return dataclasses.replace(report, findings=[portable(f) for f in report.findings])

    try:
        with sweeping():  # the scratch folders of a crashed or stopped child
            return run_forked(work, str(path))
    except Crashed as exc:
        return ModelReport(str(path), error=str(exc), exit_code=exc.exit_code)
