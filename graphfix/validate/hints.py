"""What a failure at a probe size may be, where the graph says more than onnxruntime's message: the size is past a
centred window of a table (a span Python capped, graphfix.validate.spans) or off a step the graph's own shapes need
(graphfix.validate.steps). The probe's findings carry it as their hint, and repair's note on an unchanged model that
fails says it too.
"""

from __future__ import annotations

import onnx

from graphfix.validate.spans import centred_windows
from graphfix.validate.steps import step_hint

WINDOW_HINT = ("{dims} is past {c} here, where the graph slices a constant table of {rows} rows or more around row "
               "{c} (`rel[{c} - s : {c} + s]`, s computed from {dims}): a span Python capped (`min(T, {c})`, "
               "DeBERTa's max_relative_positions) keeps the window inside the table, and tracing drops the cap. "
               "Export with the cap as a tensor op (`torch.clamp(s, max={c})`); a model written without one fails "
               "past {c} in PyTorch too (the same graph), and is deployed only up to {c}.")


def domain_hint(proto: onnx.ModelProto, sizes: dict[str, int]) -> str:
    """What a failure at `sizes` may be ("" where they are past no centred window and off no step)."""
    for c, dims in centred_windows(proto):
        if past := [dim for dim in dims if sizes.get(dim, 0) > c]:
            return WINDOW_HINT.format(dims=", ".join(past), c=c, rows=2 * c)
    return step_hint(proto, sizes)


def unchanged_failure_note(proto: onnx.ModelProto, validation) -> str:
    """Repair's note on an unchanged model that fails at probe sizes: where, why, and what may help."""
    failed = next((run.sizes for run in validation.runs if run.failed), {})
    return (f"unchanged model fails at {validation.failed_sizes or 'every'} probe size(s): "
            f"{'; '.join(validation.reasons)} ({domain_hint(proto, failed) or 'give real values with --input/--shape'}"
            "; `graphfix diagnose` probes in detail)")
