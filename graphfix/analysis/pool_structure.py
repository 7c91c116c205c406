"""What a graph's structure alone says of a pool torch.export decomposed, where the exporter's metadata (module path,
stack trace) is gone: a dynamo export converted to an older opset (`opset_version=17`) keeps none (GF011)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

LAYOUT = frozenset({"Unsqueeze", "Transpose"})  # what the decomposition does to the input before gathering
THROUGH = frozenset({"Transpose", "Where", "Gather", "Add"})  # the gathered windows, masked, read and summed
LAST = frozenset({"Div", "ReduceMean"})  # the sum divided by the bins' lengths, or a mean over bins of one length
MAX_REGION = 2000  # nodes; a 3-d pool unrolls kd * kh * kw reads


def layout_source(node: gs.Node, belongs: Callable[[gs.Node], bool] | None = None) -> gs.Tensor:
    """What `node` gathers from, back through the Unsqueeze and Transpose nodes of the pool: those `belongs`
    accepts (the exporter's metadata names the same pool), by default those whose output nothing else reads."""
    belongs = belongs or (lambda layout: len(layout.outputs[0].outputs) == 1)
    source = node.inputs[0]
    while source.inputs and source.inputs[0].op in LAYOUT and source.inputs[0].inputs and belongs(source.inputs[0]):
        source = source.inputs[0].inputs[0]
    return source


def window_region(start: gs.Node) -> dict[str, gs.Node]:
    """The nodes from a GatherND of windows on, by name: the windows moved, masked, read one position at a time and
    added up, to the Div (or ReduceMean) that ends the pool and a Squeeze after it (a 1-d pool)."""
    region: dict[str, gs.Node] = {}
    todo = [start]
    while todo and len(region) < MAX_REGION:
        node = todo.pop()
        if not node.name or node.name in region:
            continue
        region[node.name] = node
        if node.op in LAST or node.op == "Squeeze":
            consumers = [c for t in node.outputs for c in t.outputs]
            todo.extend(c for c in consumers if c.op == "Squeeze" and node.op in LAST)
            continue
        todo.extend(c for t in node.outputs for c in t.outputs if c.op in THROUGH | LAST)
    return region


def scalar_reads(constant_value, region: dict[str, gs.Node]) -> dict[tuple[str, int], set[int]]:
    """(tensor name, axis) -> the positions read by Gathers of one constant scalar index in the region."""
    reads: dict[tuple[str, int], set[int]] = {}
    for node in region.values():
        if node.op != "Gather" or len(node.inputs) != 2:
            continue
        index = constant_value(node.inputs[1])
        if index is None or np.ndim(index) != 0 or not np.issubdtype(np.asarray(index).dtype, np.integer):
            continue
        rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
        axis = int(node.attrs.get("axis", 0))
        if axis < 0 and rank is None:
            continue
        axis = axis % rank if axis < 0 else axis
        reads.setdefault((node.inputs[0].name, axis), set()).add(int(index))
    return reads


def unrolled_window(sizes, tensors, reads) -> tuple[int, object] | None:
    """(k, the axis' length) where positions 0 .. k-1 (k >= 2) of an axis whose length grows with the input sizes
    are read one at a time: a sum over the window unrolled for k positions. The first found, else None."""
    for (name, axis), steps in reads.items():
        count = len(steps)
        if count < 2 or steps != set(range(count)):
            continue
        shape = sizes.shape(tensors[name]) if name in tensors else None
        length = shape[axis] if shape is not None and axis < len(shape) else None
        if length is not None and getattr(length, "free_symbols", None):
            return count, length
    return None


def unsqueezed_1d(node: gs.Node, constant_value) -> bool:
    """Whether a 2-d pool of kernel (1, k) reads an Unsqueeze at axis -2 (or 2) and a Squeeze at that axis reads
    it: a 1-d pool written as torch.export writes `adaptive_avg_pool1d` (`nn.AvgPool1d` is a 1-d pool)."""
    kernel = list(node.attrs.get("kernel_shape", []))
    if len(kernel) != 2 or kernel[0] != 1 or not node.inputs or not node.inputs[0].inputs:
        return False
    before = node.inputs[0].inputs[0]
    after = [c for t in node.outputs for c in t.outputs]
    return (before.op == "Unsqueeze" and _axes(before, constant_value) in ([-2], [2]) and len(after) == 1
            and after[0].op == "Squeeze" and _axes(after[0], constant_value) in ([-2], [2]))


def _axes(node: gs.Node, constant_value) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    value = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    return [int(a) for a in np.ravel(value)] if value is not None else None
