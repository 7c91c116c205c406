"""`graphfix bench`: latency, throughput and RTF per model and batch size, models side by side."""

from __future__ import annotations

import click

from graphfix.cli.options import (
    MAX_RUNS,
    format_option,
    models_argument,
    parsed,
    shape_option,
    shapes_from,
    split_names,
    threads_option,
)
from graphfix.core import values
from graphfix.io.loading import load_model
from graphfix.report.text import emit_json


@click.command("bench")
@models_argument
@shape_option
@click.option("--batch", "batches", callback=split_names, metavar="N,...",
              help="Batch sizes: the leading symbolic dim of every input (e.g. 1,4,16).")
@click.option("--warmup", callback=parsed(values.count, low=0, high=MAX_RUNS), type=str, default=3, show_default=True,
              metavar="N", help="Warm-up runs (reported, not counted).")
@click.option("--runs", callback=parsed(values.count, high=MAX_RUNS), type=str, default=20, show_default=True,
              metavar="N", help="Timed runs per configuration.")
@threads_option
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="onnxruntime execution provider.")
@click.option("--audio-seconds", callback=parsed(values.seconds), default=None, metavar="SECONDS",
              help="Audio seconds per batch item, for the real-time factor (RTF).")
@format_option
def command(models, shapes, batches, warmup, runs, threads, provider, audio_seconds, fmt) -> int:
    """Benchmark MODELS (e.g. original and repaired) with onnxruntime; exit 1 if a configuration fails."""
    from graphfix.surgery.bench import BenchOptions, bench, rows_text

    sizes = [values.count(b, "--batch") for b in batches] or None
    options = BenchOptions(shapes=shapes_from(shapes), batches=sizes, warmup=warmup, runs=runs, threads=threads,
                           provider=provider, audio_seconds=audio_seconds)
    loaded = [load_model(path) for path in models]
    rows = bench(loaded, options)
    if fmt == "json":
        emit_json("bench", [row.to_json() for row in rows])
    else:
        click.echo(rows_text(rows))
    return 1 if any(row.error for row in rows) else 0
