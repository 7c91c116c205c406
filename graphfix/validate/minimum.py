"""A model's minimum size: where a failure below the export size is the model's own limit, not a bug of the export.

A Conv, Pool, reflecting Pad, STFT or TopK fails in onnxruntime and in PyTorch alike on an input shorter than its
window (or its k): below the export size such a failure is outside the model. Only where that size's batch runs
at the export's lengths, though: speechbrain's SepFormer squeezes its batch axis away at batch 1, and its Pad
fails there at every length. `diagnose`'s probe and `repair`'s proof of an unchanged model both ask this.
"""

from __future__ import annotations

import onnx

from graphfix.validate.budget import NotProbed
from graphfix.validate.footprint import Footprint
from graphfix.validate.inputs import ValidationOptions, synthesize_inputs
from graphfix.validate.runner import ModelRunner
from graphfix.validate.sizes import batch_dims

KERNEL_OPS = {"Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "Pad", "STFT",
              "Col2Im", "TopK"}  # ops whose failure below the export size is an input shorter than their window (or k)


def runs_with_its_batch(runner: ModelRunner, proto: onnx.ModelProto, binding: dict[str, int],
                        export: dict[str, int], options: ValidationOptions, footprint: Footprint | None) -> bool:
    """Whether the model runs at the export size with `binding`'s batch dims: a kernel that fails at a smaller
    length meets the model's minimum only where the batch is not what fails (a size over the memory budget is
    not run: taken as running)."""
    names = batch_dims(proto)  # once: it reads every dim of every input
    batch = {name: size for name, size in binding.items() if name in names}
    trial = {**export, **batch}
    if trial == export:
        return True
    try:
        feeds = synthesize_inputs(proto, trial, options)
        if footprint is not None:
            footprint.check(feeds)
    except NotProbed:
        return True
    return runner.run(feeds).ok
