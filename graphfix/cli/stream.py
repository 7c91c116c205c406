"""`graphfix stream`: run streaming steps with caches fed back; exit 1 on drift or failure."""

from __future__ import annotations

import click

from graphfix.cli.guarded import in_child
from graphfix.cli.options import (
    MAX_RUNS,
    format_option,
    model_argument,
    name_values,
    parsed,
    shape_option,
    shapes_from,
    threads_option,
)
from graphfix.core import values
from graphfix.io.loading import load_model
from graphfix.report.text import emit_json, printable, printable_path


@click.command("stream")
@model_argument
@click.option("--feedback", "pairs", multiple=True, required=True, metavar="OUT=IN",
              help="Output fed back into an input at the next step, e.g. r_att_cache=att_cache (repeatable).")
@click.option("--steps", callback=parsed(values.count, high=MAX_RUNS), type=str, default=8, show_default=True,
              metavar="N", help="Streaming steps to run.")
@shape_option
@click.option("--latency-tolerance", callback=parsed(values.tolerance), type=str, default=2.0, show_default=True,
              metavar="RATIO",
              help="Latency drift limit: last steps' median over first steps' median.")
@threads_option
@format_option
def command(model, pairs, steps, shapes, latency_tolerance, threads, fmt) -> int:
    """Run MODEL for --steps streaming steps, feeding each OUT back into IN; check the caches stay put."""
    from graphfix.surgery.stream import StreamOptions, stream

    options = StreamOptions(steps=steps, shapes=shapes_from(shapes), latency_tolerance=latency_tolerance,
                            threads=threads)
    feedback = name_values("--feedback", pairs)
    report = in_child(lambda: stream(load_model(model), feedback, options), model)
    if fmt == "json":
        emit_json("models", [report.to_json()])
    else:
        _print(report)
    return 0 if report.passed else 1


def _print(report) -> None:
    status = click.style("passed", fg="green") if report.passed else click.style("FAILED", fg="red")
    pairs = printable(", ".join(f"{o}={i}" for o, i in report.pairs))
    click.echo(f"{printable_path(report.path)}: {status}: {report.steps_run} step(s), feedback {pairs}")
    cache = report.trend.get("cache_bytes")
    if cache:
        if cache["flat"]:
            click.echo(f"  cache: {cache['first']} bytes at every step (flat)")
        else:
            click.echo(f"  cache: {cache['first']} -> {cache['last']} bytes ({cache['per_step']:+.0f} per step)")
    latency = report.trend.get("latency_ms")
    if latency:
        click.echo(f"  latency: {latency['first']:.3f} -> {latency['last']:.3f} ms per step (x{latency['ratio']:.2f}"
                   f", {'flat' if latency['flat'] else 'GROWING'}); warm-up run {report.warmup_ms:.1f} ms excluded")
    for problem in report.problems:
        click.echo(f"  problem: {printable(problem)}")
