"""What a failure at a probe size may be, where the graph says more than onnxruntime's message: the size moves a
batch dim `--shape` fixed (graphfix.validate.sizes.shape_moved), is past a centred window of a table (a span Python
capped, graphfix.validate.spans) or off a step the graph's own shapes need (graphfix.validate.steps). The probe's
findings carry it as their hint, and repair's note on an unchanged model that fails says it too.
"""

from __future__ import annotations

import onnx

from graphfix.validate.graph_sizes import dim_names, graph_inputs
from graphfix.validate.spans import centred_windows
from graphfix.validate.steps import step_hint

WINDOW_HINT = ("s, computed from {dims}, is past {c} here, where the graph slices a constant table of about {rows} "
               "rows around row {c} (`rel[{c} - s : {c} + s]`): a span Python capped (`min(T, {c})`, "
               "DeBERTa's max_relative_positions) keeps the window inside the table, and tracing drops the cap; "
               "a table the model grows in Python past its length (ESPnet's and Wenet's relative positions, "
               "`extend_pe`) was traced at the size it had then. Export with the cap as a tensor op "
               "(`torch.clamp(s, max={c})`), or with the table grown to the longest length deployed (`max_len`); a "
               "model written without either fails past {c} in PyTorch too (the same graph), and is deployed only "
               "up to {c}.")


MOVED_HINT = ("{dims} is not the size --shape gave ({given}): the proof also runs the batch dims --shape fixed "
              "moved, since a model run at one size only is compared with nothing but itself. If PyTorch runs "
              "that batch, the export baked the batch (`int(x.shape[0])`): re-export with it a tensor. If PyTorch "
              "refuses it too (rows a Reshape splits into a fixed count, as MusicGen's codebooks), give the inputs "
              "with --input NAME=FILE.npy: their sizes are not moved.")


def domain_hint(proto: onnx.ModelProto, sizes: dict[str, int], shapes: dict | None = None) -> str:
    """What a failure at `sizes` may be ("" where they move no dim `--shape` fixed (`shapes`), are past no centred
    window and off no step)."""
    given = {name: size for vi in graph_inputs(proto) for name, size in
             zip(dim_names(vi), (shapes or {}).get(vi.name) or (), strict=False) if isinstance(name, str)}
    if moved := [f"{dim} = {sizes[dim]}" for dim, size in given.items() if dim in sizes and sizes[dim] != size]:
        return MOVED_HINT.format(dims=", ".join(moved), given=", ".join(f"{d} = {s}" for d, s in given.items()))
    for window in centred_windows(proto):
        if window.past(sizes):
            return WINDOW_HINT.format(dims=", ".join(window.dims), c=window.c, rows=2 * window.c)
    return step_hint(proto, sizes)


def unchanged_failure_note(proto: onnx.ModelProto, validation, shapes: dict | None = None) -> str:
    """Repair's note on an unchanged model that fails at probe sizes: where, why, and what may help (`shapes`: the
    sizes --shape gave)."""
    failed = next((run.sizes for run in validation.runs if run.failed), {})
    hint = domain_hint(proto, failed, shapes).rstrip(".") or "give real values with --input/--shape"
    return (f"unchanged model fails at {validation.failed_sizes or 'every'} probe size(s): "
            f"{'; '.join(validation.reasons)} ({hint}; `graphfix diagnose` probes in detail)")
