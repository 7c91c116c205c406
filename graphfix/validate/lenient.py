"""Runs onnxruntime allows and ONNX does not: a Concat given an empty input whose dims off the axis disagree.

onnxruntime's Concat does not check the dims of an empty input (it still counts its length along the axis); the
ONNX operator and PyTorch's `cat` reject a (1, 0, 4) beside a (2, 4, 4). A broken original, a baked
`expand(int(B), int(T) - 1, D)` beside `x[:, 1:]`, then "runs" at T = 1 and returns a (2, 4, 8), where the repaired
model returns the empty (1, 0, 8) PyTorch returns (helper 138): that run is no reference.

    why = skipped_empty_input(original_runner, feeds)   # None, or which Concat and which shapes
"""

from __future__ import annotations

import numpy as np
import onnx

from graphfix.validate.runner import ModelRunner


def emptied(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> bool:
    """The candidate returns an empty output where the original's run returned a filled one: the sign that the
    original may have run through such a Concat (checked only then: it costs a run of the original)."""
    return any(np.size(actual[name]) == 0 < np.size(value) for name, value in expected.items() if name in actual)


def skipped_empty_input(runner: ModelRunner, feeds: dict[str, np.ndarray]) -> str | None:
    """The first Concat of the main graph that, at these inputs, got an empty input whose dims off the axis
    differ from another input's; None when none did (or the tensors could not be read)."""
    graph = runner.proto.graph
    concats = [node for node in graph.node if node.op_type == "Concat" and len(node.input) > 1]
    produced = {out for node in graph.node for out in node.output if out}
    exposed = sorted({name for node in concats for name in node.input if name in produced})
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    shapes.update({name: np.shape(value) for name, value in feeds.items()})
    if exposed:
        run = runner.exposing(exposed).run(feeds)
        if not run.ok:
            return None
        shapes.update({name: np.shape(value) for name, value in run.outputs.items()})
    for node in concats:
        operands = [shapes.get(name) for name in node.input]
        if any(shape is None for shape in operands) or not _skips_an_empty(operands, _axis(node)):
            continue
        return (f"onnxruntime's Concat '{node.name}' took an empty input ({_shapes(operands)}): ONNX and "
                f"PyTorch reject inputs whose dims off the axis differ")
    return None


def _skips_an_empty(shapes: list[tuple], axis: int) -> bool:
    rank = len(shapes[0])
    if rank == 0 or any(len(shape) != rank for shape in shapes) or not -rank <= axis < rank:
        return False
    off_axis = {tuple(d for i, d in enumerate(shape) if i != axis % rank) for shape in shapes}
    return len(off_axis) > 1 and any(0 in shape for shape in shapes)


def _axis(node: onnx.NodeProto) -> int:
    return next((attr.i for attr in node.attribute if attr.name == "axis"), 0)


def _shapes(shapes: list[tuple]) -> str:
    return " beside ".join(str(list(shape)) for shape in shapes)
