"""`graphfix extract`: the subgraph between named tensors, checked against the whole, then written."""

from __future__ import annotations

import click

from graphfix.cli.options import format_option
from graphfix.cli.surgery_options import (
    emit_result,
    model_argument,
    name_values,
    output_option,
    shape_option,
    split_names,
    tolerance_options,
    validation_options,
)
from graphfix.loading import load_model


@click.command("extract")
@model_argument
@click.option("--inputs", callback=split_names, required=True, metavar="NAME,...",
              help="Tensors the part starts from (graph inputs or intermediate tensors).")
@click.option("--outputs", callback=split_names, required=True, metavar="NAME,...",
              help="Tensors the part computes (graph outputs or intermediate tensors).")
@click.option("--name", "names", multiple=True, metavar="OLD=NEW",
              help="Rename a boundary tensor in the part, e.g. /encoder/norm/LayerNormalization_output_0=encoder_out.")
@output_option
@shape_option
@tolerance_options
@format_option
def command(model, inputs, outputs, names, output, shapes, rtol, atol, fmt) -> int:
    """Cut the part of MODEL between --inputs and --outputs; write it once it reproduces the whole."""
    from graphfix.surgery.extract import extract

    result = extract(load_model(model), inputs, outputs, output, validation_options(shapes, rtol, atol),
                     rename=name_values("--name", names))
    return emit_result(result, fmt)
