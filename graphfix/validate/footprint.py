"""The memory a probe size would take, estimated before it runs: a size whose intermediate tensors would exceed
the probe's memory budget is skipped with a note instead of being handed to onnxruntime.

A 3 KB model can ask for terabytes: `Expand` or `Reshape` to a constant [10⁶, 10⁶], `Range(0, 10¹²)`,
`ConstantOfShape` or `Tile` of constant targets. onnxruntime then fails to allocate (a "failure" of the model
that is none), or, where the operating system overcommits memory, gets it and pages the machine to a halt.
Every tensor's shape is known before the run from two inferences: onnx's (C++: it folds the constant inputs
of Reshape, Range, ConstantOfShape, Expand and Tile into the output shape) and onnxruntime's symbolic one (the
probe's, with dims named after the inputs' dims). Each shape is evaluated at the size about to run; one tensor
over the budget skips the size. Tensors whose shape stays unknown are not counted: the estimate is a lower
bound, and the run budget (`GRAPHFIX_MAX_RUN_SECONDS`) and onnxruntime's allocation failure stay behind it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper

from graphfix.core.counts import spelled
from graphfix.io.budgets import available_memory, probe_memory_budget
from graphfix.validate.budget import ENV_BUDGET, NotProbed
from graphfix.validate.compare import evaluate_dim
from graphfix.validate.graph_sizes import dim_names, graph_inputs

Shape = list  # dims: int, symbolic name or expression, or None


class Footprint:
    """Tensor name -> (element size in bytes, shapes from each inference); `check(feeds)` before a run."""

    def __init__(self, tensors: dict[str, tuple[int, list[Shape]]], model: onnx.ModelProto):
        self.tensors = tensors
        self.inputs = [vi for vi in graph_inputs(model) if vi.type.HasField("tensor_type")]
        self.available: int | None = None  # read at the first check, then the same for every size of this probe

    @classmethod
    def of(cls, model: onnx.ModelProto, symbolic: dict[str, tuple[int, Shape | None]]) -> Footprint:
        """From onnx's shape inference of `model` and the symbolic shapes the probe already has."""
        from graphfix.analysis.shapes import infer_shapes, value_info_shape

        tensors: dict[str, tuple[int, list[Shape]]] = {}

        def add(name: str, elem_type: int, shape: Shape | None) -> None:
            size = _itemsize(elem_type)
            if shape is None or size is None:
                return
            tensors.setdefault(name, (size, []))[1].append(shape)

        inferred = infer_shapes(model).graph
        for vi in (*inferred.value_info, *inferred.output):
            if vi.type.HasField("tensor_type"):
                add(vi.name, vi.type.tensor_type.elem_type, value_info_shape(vi))
        for name, (elem_type, shape) in symbolic.items():
            add(name, elem_type, shape)
        return cls(tensors, model)

    def largest(self, binding: dict[str, int]) -> tuple[str, list[int], int] | None:
        """The largest tensor whose shape is known at `binding`: (name, dims, bytes)."""
        evaluated: dict[object, int | None] = {}  # one evaluation per distinct dim expression

        def dim(value) -> int | None:
            if isinstance(value, int):
                return value if value >= 0 else None
            if value not in evaluated:
                evaluated[value] = evaluate_dim(value, binding)
            return evaluated[value]

        best: tuple[str, list[int], int] | None = None
        for name, (itemsize, shapes) in self.tensors.items():
            for shape in shapes:
                dims = [dim(d) for d in shape]
                if any(d is None for d in dims):
                    continue
                size = math.prod(dims) * itemsize
                if best is None or size > best[2]:
                    best = (name, dims, size)
        return best

    def check(self, feeds: dict[str, np.ndarray]) -> None:
        """Raise NotProbed, naming the tensor and its bytes, when one tensor of a run with `feeds` would take
        more than the probe's memory budget."""
        self.check_sizes(bind_feeds(self.inputs, feeds))

    def fits(self, binding: dict[str, int]) -> bool:
        """Whether a run at `binding` stays inside the probe's memory budget (`check_sizes` does not raise)."""
        try:
            self.check_sizes(binding)
        except NotProbed:
            return False
        return True

    def check_sizes(self, binding: dict[str, int]) -> None:
        """`check` for a binding of the symbolic dims."""
        largest = self.largest(binding)
        # one budget for every size: the memory available *now* moves with other processes, and the sizes skipped
        # for one tensor would read as several reasons (a flaky CI run: two findings, not one)
        self.available = self.available or available_memory()
        budget = probe_memory_budget(self.available)
        if largest is None or largest[2] <= budget:
            return
        name, dims, size = largest
        raise NotProbed(f"tensor '{name}' {dims} would take {spelled(size)} bytes, over the probe's memory budget "
                        f"of {budget:,} ({ENV_BUDGET}); the model was not run at these sizes")


def bind_feeds(inputs: Iterable[onnx.ValueInfoProto], feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """Symbolic dim -> size, read from the shapes of the values about to be fed."""
    binding: dict[str, int] = {}
    for vi in inputs:
        value = feeds.get(vi.name)
        if value is None:
            continue
        shape = np.shape(value)
        for axis, name in enumerate(dim_names(vi)):
            if isinstance(name, str) and axis < len(shape):
                binding.setdefault(name, int(shape[axis]))
    return binding


def _itemsize(elem_type: int) -> int | None:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None  # strings and unknown types: not estimated
