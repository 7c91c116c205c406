"""`graphfix freeze`: replace inputs by constant fills, fold, simplify, check against the original, write."""

from __future__ import annotations

import click

from graphfix.cli.guarded import in_child
from graphfix.cli.options import (
    checked_output_options,
    model_argument,
    name_values,
    shape_option,
    validation_options_from,
)
from graphfix.io.loading import load_model
from graphfix.report.text import emit_result


@click.command("freeze")
@model_argument
@click.option("--input", "fills", multiple=True, required=True, metavar="NAME=VALUE",
              help="Input to freeze: true, false, a number, or @file.npy (repeatable).")
@checked_output_options
@click.option("--no-simplify", is_flag=True, help="Fold the fill only; skip onnxsim.")
@shape_option
def command(model, fills, output, no_simplify, shapes, rtol, atol, fmt) -> int:
    """Freeze inputs of MODEL to constant fills that follow the other inputs' dims at run time."""
    from graphfix.surgery.freeze import freeze, parse_fill

    values = {name: parse_fill(text) for name, text in name_values("--input", fills).items()}
    checks = validation_options_from(shapes=shapes, rtol=rtol, atol=atol)
    simplify = not no_simplify
    result = in_child(lambda: freeze(load_model(model), values, output, checks, simplify=simplify), model)
    return emit_result(result, fmt)
