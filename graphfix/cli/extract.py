"""`graphfix extract`: the subgraph between named tensors, checked against the whole, then written."""

from __future__ import annotations

import click

from graphfix.cli.guarded import in_child
from graphfix.cli.options import (
    checked_output_options,
    model_argument,
    name_values,
    shape_option,
    split_names,
    validation_options_from,
)
from graphfix.io.loading import load_model
from graphfix.report.text import emit_result


@click.command("extract")
@model_argument
@click.option("--inputs", callback=split_names, required=True, metavar="NAME,...",
              help="Tensors the part starts from (graph inputs or intermediate tensors).")
@click.option("--outputs", callback=split_names, required=True, metavar="NAME,...",
              help="Tensors the part computes (graph outputs or intermediate tensors).")
@click.option("--name", "names", multiple=True, metavar="OLD=NEW",
              help="Rename a boundary tensor in the part, e.g. /encoder/norm/LayerNormalization_output_0=encoder_out.")
@checked_output_options
@shape_option
def command(model, inputs, outputs, names, output, shapes, rtol, atol, fmt) -> int:
    """Cut the part of MODEL between --inputs and --outputs; write it once it reproduces the whole."""
    from graphfix.surgery.extract import extract

    checks = validation_options_from(shapes=shapes, rtol=rtol, atol=atol)
    rename = name_values("--name", names)
    result = in_child(lambda: extract(load_model(model), inputs, outputs, output, checks, rename=rename), model)
    return emit_result(result, fmt)
