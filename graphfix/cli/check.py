"""`graphfix check PATH...`: the pre-deployment gate (CI, pre-commit) — rules plus an onnxruntime probe run.

Exit 0 when every model is clean, 1 when a finding reaches --fail-on or the probe run fails, 2 on input errors.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import click

from graphfix.cli.guarded import sweeping
from graphfix.cli.options import (
    OutputPath,
    batch_options,
    config_filter,
    config_options,
    current_config,
    fail_on_option,
    paths_argument,
    probe_inputs,
    report_format_option,
    rule_inputs,
    rule_options_from,
    rule_selection,
    validation_options_from,
)
from graphfix.core.config import canonical_code, known_codes, probe_options_for
from graphfix.core.registry import select_rules
from graphfix.io.paths import expand_globs, expand_paths
from graphfix.io.replaced import files_read_by
from graphfix.io.targets import check_target, write_atomic
from graphfix.pipeline.batch import Job, default_workers, run_jobs, should_show_progress, summary_table
from graphfix.report.text import emit_json, fails, findings_text, json_text, rejection_line


@click.command("check")
@paths_argument
@report_format_option
@fail_on_option
@rule_selection
@rule_inputs
@probe_inputs
@batch_options
@click.option("--output-file", type=OutputPath(dir_okay=False), metavar="FILE",
              help="Write the report to FILE instead of stdout (e.g. graphfix.report.sarif).")
@config_options
def command(paths, fmt, fail_on, only, skip, expect_outputs, trace_shapes, show_rejected, shapes, input_files,
            rtol, atol, jobs, output_file) -> int:
    """Gate models before deployment: rules and an onnxruntime run at several sizes; exit 1 if any fails.

    PATH is a model, a folder (searched for *.onnx) or a quoted glob ('models/**/*.onnx'). Settings come from
    [tool.graphfix] in the project's pyproject.toml (see --config); command-line options override them.
    """
    config = current_config()
    started = time.perf_counter()
    only, skip = _codes(only, "--only"), _codes(skip, "--skip")
    rules = tuple(rule.code for rule in select_rules(only, skip))
    models = expand_paths(expand_globs(paths))
    options = rule_options_from(expect_outputs=expect_outputs, trace_shapes=trace_shapes, several=len(models) > 1)
    base = validation_options_from(shapes=shapes, input_files=input_files, rtol=rtol, atol=atol)
    job_list = []
    inputs = report_inputs(output_file, [m.path for m in models]) if output_file else []
    for model in models:
        select, ignore = config_filter(model.path)
        job_list.append(Job(model.path, rules, options, probe_options_for(config, model.path, base, len(models) > 1),
                            select=select or only, ignore=tuple(dict.fromkeys((*skip, *ignore)))))
    with sweeping():  # the scratch folders of a crashed child
        outcomes = run_jobs(job_list, jobs or default_workers(), progress=should_show_progress(fmt))
    failed = sum(fails(o.findings, fail_on) or o.runtime_failures > 0 for o in outcomes if o.error is None)
    _report(outcomes, fmt, output_file, inputs, show_rejected, time.perf_counter() - started, failed)
    if any(o.error for o in outcomes):
        return max(o.exit_code for o in outcomes)
    return 1 if failed else 0


def _codes(codes, option: str) -> tuple[str, ...]:
    """Canonical codes (rule names accepted)."""
    return tuple(dict.fromkeys(canonical_code(code, option) for code in codes))


def report_inputs(output_file: Path, models: list[Path]) -> list[Path]:
    """The files of this run the report may not replace (checked before any model is: nothing is wasted): the
    models, and the data files of those whose folder holds an existing file of the report's name."""
    check_target(output_file, models)
    inputs = list(models)
    if output_file.is_file():
        where = output_file.parent.resolve()
        for model in models:
            # loading reads the data beside the name given, a link's too (helper 63: the report replaced the
            # weights of `links/m.onnx -> ../real/m.onnx`, checked beside `real/`); its locations are in the file
            folder = model.parent.resolve()
            if where.is_relative_to(folder):
                inputs += files_read_by(model.resolve(), folder)
        check_target(output_file, inputs)
    return inputs


def _report(outcomes, fmt, output_file, inputs, show_rejected, seconds, failed) -> None:
    """To stdout, or into --output-file as graphfix writes a model: staged beside it, then renamed into place."""
    out = io.StringIO() if output_file else None
    if fmt == "sarif":
        from graphfix.report.sarif import sarif_log

        click.echo(json_text(sarif_log(outcomes)), file=out)
    elif fmt == "json":
        if out is None:
            emit_json("models", [o.to_json(show_rejected) for o in outcomes])
        else:
            from graphfix.core.version import VERSION

            click.echo(json_text({"graphfix": VERSION, "models": [o.to_json(show_rejected) for o in outcomes]}),
                       file=out)
    else:
        for outcome in outcomes:
            click.echo(findings_text(outcome.path, outcome.findings, outcome.error), file=out,
                       err=bool(outcome.error) and out is None)
            for rejection in outcome.rejections if show_rejected else ():
                click.echo(rejection_line(rejection), file=out)
        click.echo(summary_table(outcomes, seconds, failed, known_codes()), file=out)
    if out is not None:
        write_atomic(output_file, out.getvalue(), inputs)
