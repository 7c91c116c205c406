"""Thresholds met by a size read from an inner tensor's Shape: the size analysis names the input dims it follows.

`graph_sizes.size_thresholds` reads the whole constants a size is subtracted from, clamped by or compared with
where the size is an input's own axis. facebookresearch/denoiser's Demucs reads its length from the normalised
audio (`mix.unsqueeze(1) / (floor + std)`), and `math.ceil` in its `valid_length` bakes its pad to a multiple as
`Pad(4004 - N)` at N = 4000: longer inputs are cut at 4004, shorter ones padded by the wrong amount, and only a
probe past 4004 shows it (helper 98). The size analysis carries that inner Shape back to N. It runs only where such
a constant is met by a size the graph's own reading left unnamed.
"""

from __future__ import annotations

import onnx

from graphfix.analysis.sizes.domain import last_size_at_most
from graphfix.core.recent import per_model
from graphfix.validate.graph_sizes import unnamed_thresholds


@per_model  # every probe_sizes call of a proof asks
def inner_thresholds(model: onnx.ModelProto) -> list[tuple[int, tuple[str, ...]]]:
    """(c, input dims) for each whole constant c that a size read from an inner tensor's Shape meets in a
    subtraction, a Min, Max or Clip, or a comparison (`graph_sizes.THRESHOLD_OPS`), the dims those the size
    analysis finds the size to follow, in the inputs' order. Where the size follows one input dim, c is taken to
    that dim's units: the largest size of it at which the size is c or less (a pad to a valid length of a strided
    Conv's frames, `1024 - N / 4`, crosses at 4096 samples; helper 100)."""
    unnamed = unnamed_thresholds(model)
    if not unnamed:
        return []
    from graphfix.analysis.sizes import static_sizes

    sizes, graph = static_sizes(model)
    tensors = graph.tensors()
    order = [dim.dim_param for vi in model.graph.input for dim in vi.type.tensor_type.shape.dim if dim.dim_param]
    found: list[tuple[int, tuple[str, ...]]] = []
    for c, names in unnamed:
        read = [entry for name in names if name in tensors for entry in sizes.value(tensors[name]) or ()
                if getattr(entry, "free_symbols", None)]
        symbols = {symbol for entry in read for symbol in entry.free_symbols}
        dims = tuple(dict.fromkeys(d for d in order if d in {symbol.name for symbol in symbols}))
        if len(read) == 1:  # in the input's units: frames of a strided Conv's samples
            c = last_size_at_most(read[0], c) or c
        if dims and (c, dims) not in found:
            found.append((c, dims))
    return found
