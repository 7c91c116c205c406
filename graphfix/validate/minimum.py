"""A model's minimum size: where a failure below the export size is the model's own limit, not a bug of the export.

A Conv, Pool, reflecting Pad, STFT or TopK fails in onnxruntime and in PyTorch alike on an input shorter than its
window (or its k): below the export size such a failure is outside the model. So is a failure of a node that reads
a tensor of no elements where no input fed has none: a window before it took all of the input (onnxruntime's
AveragePool returns an empty output where PyTorch's AvgPool1d fails, helper 119: transformers' SEW at one frame,
then a Reshape failed and was taken for a baked shape). Only where that size's batch runs
at the export's lengths, though: speechbrain's SepFormer squeezes its batch axis away at batch 1, and its Pad
fails there at every length. `diagnose`'s probe and `repair`'s proof of an unchanged model both ask this.
"""

from __future__ import annotations

import numpy as np
import onnx

from graphfix.validate.budget import NotProbed
from graphfix.validate.footprint import Footprint
from graphfix.validate.inputs import ValidationOptions, synthesize_inputs
from graphfix.validate.runner import ModelRunner, upstream_only
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


def emptied(shapes: dict[str, list[int]], feeds: dict[str, np.ndarray]) -> bool:
    """Whether a node's input `shapes` hold a tensor of no elements where no input fed has none."""
    return any(0 in dims for dims in shapes.values()) and not any(0 in np.shape(v) for v in feeds.values())


def emptied_at(runner: ModelRunner, node_name: str, feeds: dict[str, np.ndarray]) -> bool:
    """`emptied` for the inputs of the node named `node_name` in the runner's model, run up to it."""
    node = next((n for n in runner.proto.graph.node if n.name == node_name), None)
    return node is not None and not any(0 in np.shape(v) for v in feeds.values()) and \
        emptied(input_shapes(runner.proto, runner.base_dir, node, feeds), feeds)


def input_shapes(model: onnx.ModelProto, base_dir, node: onnx.NodeProto, feeds) -> dict[str, list[int]]:
    """Shapes of a (failing) node's inputs, from a run of only the nodes upstream of it."""
    wanted = [name for name in node.input if name]
    result = ModelRunner(upstream_only(model, wanted), base_dir).run(feeds)
    if not result.ok:
        return {}
    return {name: list(np.shape(result.outputs[name])) for name in wanted if name in result.outputs}
