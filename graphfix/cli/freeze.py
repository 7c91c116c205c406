"""`graphfix freeze`: replace inputs by constant fills, fold, simplify, check against the original, write."""

from __future__ import annotations

import click

from graphfix.cli.options import format_option
from graphfix.cli.surgery_options import (
    emit_result,
    model_argument,
    name_values,
    output_option,
    shape_option,
    tolerance_options,
    validation_options,
)
from graphfix.loading import load_model


@click.command("freeze")
@model_argument
@click.option("--input", "fills", multiple=True, required=True, metavar="NAME=VALUE",
              help="Input to freeze: true, false, a number, or @file.npy (repeatable).")
@output_option
@click.option("--no-simplify", is_flag=True, help="Fold the fill only; skip onnxsim.")
@shape_option
@tolerance_options
@format_option
def command(model, fills, output, no_simplify, shapes, rtol, atol, fmt) -> int:
    """Freeze inputs of MODEL to constant fills that follow the other inputs' dims at run time."""
    from graphfix.surgery.freeze import freeze, parse_fill

    values = {name: parse_fill(text) for name, text in name_values("--input", fills).items()}
    result = freeze(load_model(model), values, output, validation_options(shapes, rtol, atol),
                    simplify=not no_simplify)
    return emit_result(result, fmt)
