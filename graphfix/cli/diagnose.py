"""`graphfix diagnose PATH...`: findings for each model, static and (unless --static) at run time."""

from __future__ import annotations

import click

from graphfix.api import diagnose_path
from graphfix.cli.options import (
    fail_on_option,
    format_option,
    paths_argument,
    probe_inputs,
    rule_inputs,
    rule_options_from,
    rule_selection,
    validation_options_from,
)
from graphfix.discovery import expand_paths
from graphfix.registry import select_rules
from graphfix.report import emit_json, fails, findings_text


@click.command("diagnose")
@paths_argument
@format_option
@fail_on_option
@click.option("--static", is_flag=True, help="Graph analysis only: no onnxruntime, external weights never read.")
@rule_selection
@rule_inputs
@probe_inputs
def command(paths, fmt, fail_on, static, only, skip, expect_outputs, trace_shapes, show_rejected,
            shapes, input_files, rtol, atol) -> int:
    """Report what will break each model at deployment, naming node, cause and fix."""
    rules = select_rules(only, skip)
    options = rule_options_from(static=static, expect_outputs=expect_outputs, trace_shapes=trace_shapes)
    probing = None if static else validation_options_from(shapes=shapes, input_files=input_files, rtol=rtol,
                                                          atol=atol)
    reports = [diagnose_path(m.path, rules, options, probing) for m in expand_paths(paths)]
    if fmt == "json":
        emit_json("models", [r.to_json(show_rejected) for r in reports])
    else:
        for report in reports:
            click.echo(findings_text(report.path, report.findings, report.error), err=bool(report.error))
            if show_rejected:
                for rejection in report.rejections:
                    click.echo(f"  rejected {rejection.rule} [{', '.join(rejection.nodes)}]: {rejection.reason}")
    if any(r.error for r in reports):
        return max(r.exit_code for r in reports)
    return 1 if any(fails(r.findings, fail_on) for r in reports) else 0
