"""A model's minimum size: where a failure below the export size is the model's own limit, not a bug of the export.

A Conv, Pool, reflecting Pad, STFT or TopK fails in onnxruntime and in PyTorch alike on an input shorter than its
window (or its k): below the export size such a failure is outside the model. So is a failure of a node that reads
a tensor of no elements where a Conv or Pool above it is short of its window at that size and not at the export
size (onnxruntime's AveragePool returns a frame where PyTorch's AvgPool1d fails, helper 119: transformers' SEW at
one frame, then a Reshape failed and was taken for a baked shape); not where only a baked crop emptied it (helpers
121 and 122). Only where that size's batch runs
at the export's lengths, though: speechbrain's SepFormer squeezes its batch axis away at batch 1, and its Pad
fails there at every length. `diagnose`'s probe and `repair`'s proof of an unchanged model both ask this.
"""

from __future__ import annotations

import numpy as np
import onnx

from graphfix.core.windows import window_of
from graphfix.validate.budget import NotProbed
from graphfix.validate.footprint import Footprint
from graphfix.validate.inputs import ValidationOptions, synthesize_inputs
from graphfix.validate.runner import ModelRunner, upstream_only
from graphfix.validate.sizes import batch_dims

CREATOR_HOPS = 32  # ops walked up from a failing node to the one that emptied what it reads
WINDOWS = frozenset({"Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool"})  # no ConvTranspose:
# it reads fewer positions than its kernel by design
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


def emptied_at(runner: ModelRunner, node_name: str, feeds: dict[str, np.ndarray],
               export_feeds: dict[str, np.ndarray] | None) -> bool:
    """Whether the node named `node_name` in the runner's model reads a tensor of no elements, no input fed having
    none, where a Conv or Pool above it (WINDOWS, within CREATOR_HOPS) reads an input shorter than its window at
    these `feeds` and not at the export size's (`export_feeds`): the size is below that window's, where PyTorch
    fails (its AvgPool1d does, where onnxruntime's AveragePool returns a frame, and transformers' SEW then cut its
    positions to none, helper 119). Not an input a baked Slice emptied (helper 121: `x[:, int(T) - 1:int(T)]` is
    empty below the export length, and its reader's failure is the bug), even beside a window short at every size
    (a `ceil_mode` MaxPool of 3 over 2 mel rows, a ConvTranspose: helper 122). Shapes come from runs of the nodes
    above it."""
    model = runner.proto
    node = next((n for n in model.graph.node if n.name == node_name), None)
    if node is None or export_feeds is None or any(0 in np.shape(v) for v in feeds.values()):
        return False
    producers = {name: n for n in model.graph.node for name in n.output if name}
    constants = {t.name for t in model.graph.initializer}
    wanted, frontier = set(), [name for name in node.input if name]
    for _ in range(CREATOR_HOPS):
        step = []
        for name in frontier:
            if name not in wanted and name in producers:
                wanted.add(name)
                step.extend(name for name in producers[name].input if name)
        frontier = step
    shapes = {**_shapes(runner, sorted(wanted), feeds), **{name: list(np.shape(v)) for name, v in feeds.items()}}
    if not any(0 in shapes.get(name, ()) for name in node.input):
        return False
    short = {id(kernel): kernel for kernel in (producers[name] for name in wanted) if kernel.op_type in WINDOWS
             and kernel.input and kernel.input[0] not in constants and _short(kernel, shapes)}
    if not short:
        return False
    names = sorted({name for kernel in short.values() for name in (kernel.input[0], kernel.output[0]) if name})
    exported = {**_shapes(runner, names, export_feeds), **{name: list(np.shape(v)) for name, v in export_feeds.items()}}
    return any(kernel.input[0] in exported and not _short(kernel, exported) for kernel in short.values())


def _short(kernel: onnx.NodeProto, shapes: dict[str, list[int]]) -> bool:
    """Whether the window's input, which holds elements, leaves it no output along a spatial axis as PyTorch counts
    it (its pads and dilations counted; with `ceil_mode`, a partial window counts), or its output holds none:
    PyTorch's Conv and Pool fail there, where onnxruntime's AveragePool returned a frame of 1 where its kernel of 2
    wants 2 (helper 119)."""
    before, after = shapes.get(kernel.input[0]), shapes.get(kernel.output[0]) if kernel.output else None
    if before is None or 0 in before:
        return False
    if after is not None and 0 in after:
        return True
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in kernel.attribute}
    window = window_of(attrs, len(before) - 2) if "kernel_shape" in attrs else None
    if window is None or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
        return False
    ceil = bool(attrs.get("ceil_mode", 0))
    for j, length in enumerate(before[2:]):
        span = length + sum(window.pads_at(j)) - window.reach(j)  # the output's (count - 1) * stride
        if span < 0 and (not ceil or span <= -window.strides[j]):
            return True
    return False


def input_shapes(runner: ModelRunner, model: onnx.ModelProto, node: onnx.NodeProto, feeds) -> dict[str, list[int]]:
    """Shapes of a (failing) node's inputs in `model` (the runner's, or a cut of it), from a run of only the nodes
    upstream of it, with the runner's weights and data files."""
    return _shapes(runner, [name for name in node.input if name], feeds, model)


def _shapes(runner: ModelRunner, names: list[str], feeds, model: onnx.ModelProto | None = None
            ) -> dict[str, list[int]]:
    """The shapes of the tensors `names`, from one run of the nodes upstream of them; {} where it fails. Not a
    sequence's (`SplitToSequence` of `x.split(4, 1)`: a list of tensors of several shapes, helper 153)."""
    upstream = upstream_only(model if model is not None else runner.proto, names)
    result = ModelRunner(upstream, runner.base_dir, weights=runner.weights, files=runner.files).run(feeds)
    if not result.ok:
        return {}
    return {name: list(np.shape(result.outputs[name])) for name in names
            if isinstance(result.outputs.get(name), np.ndarray)}
