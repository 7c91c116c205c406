"""`graphfix set-shape`: fix or free input dims, refresh shape information, check, write."""

from __future__ import annotations

import click

from graphfix.cli.guarded import in_child
from graphfix.cli.options import checked_output_options, model_argument, name_values, validation_options_from
from graphfix.io.loading import load_model
from graphfix.report.text import emit_result


@click.command("set-shape")
@model_argument
@click.option("--shape", "shapes", multiple=True, required=True, metavar="NAME=DIMS",
              help="New dims of an input: numbers fix, names share, ? frees (1x16000, Bx?) (repeatable).")
@checked_output_options
def command(model, shapes, output, rtol, atol, fmt) -> int:
    """Set the input dims of MODEL, drop stale value_info, infer shapes again; write once it runs."""
    from graphfix.surgery.set_shape import parse_named_dims, set_shape

    dims = {name: parse_named_dims(text) for name, text in name_values("--shape", shapes).items()}
    checks = validation_options_from(shapes=(), rtol=rtol, atol=atol)
    result = in_child(lambda: set_shape(load_model(model), dims, output, checks), model)
    return emit_result(result, fmt)
