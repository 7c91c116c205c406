"""The one builder of new graph pieces: constants, ops, and shape vectors read at run time (`Shape(x)[i]`).

Builders append nodes to a graph and return the new output tensor; they never clean up (the engine does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphfix.analysis.constants import Elem

# The first opset of each op in the form the builders write it (Slice's and ReduceSum's bounds as inputs, ...).
# An older model cannot take it: the fix raises (the engine drops it with that reason) rather than write a node
# onnxruntime will not load.
FIRST_OPSET = {"Slice": 10, "Mod": 10, "Range": 11, "CumSum": 11, "LessOrEqual": 12, "Trilu": 14}


class OpsetTooOld(Exception):
    pass


class Builder:
    """Appends nodes to `graph` with names derived from `prefix`; opset-aware where ops changed signature. A prefix
    an earlier builder took in the graph gets a number: two fixes of one node's entries (an Expand's batch and
    length, held by one Concat: helper 138) named their tensors alike, and the second's read the first's."""

    def __init__(self, graph: gs.Graph, prefix: str, opset: int):
        names = [node.name for node in graph.nodes] + list(graph.tensors())
        taken, number = prefix, 1
        while any(name.startswith((f"{taken}/", f"{taken}_")) for name in names):
            number += 1
            taken = f"{prefix}_{number}"
        self.graph, self.prefix, self.opset, self.count = graph, taken, opset, 0

    def const(self, values: Any, dtype=np.int64) -> gs.Constant:
        self.count += 1
        return gs.Constant(f"{self.prefix}_c{self.count}", np.asarray(values, dtype=dtype))

    def op(self, op: str, inputs: list, attrs: dict | None = None, dtype=np.int64) -> gs.Variable:
        if self.opset < FIRST_OPSET.get(op, 0):
            raise OpsetTooOld(f"the fix needs {op} of opset {FIRST_OPSET[op]} or later, and the model imports opset "
                              f"{self.opset}: re-export it with a newer opset_version")
        self.count += 1
        out = gs.Variable(f"{self.prefix}_{op.lower()}{self.count}", dtype=dtype)
        self.graph.nodes.append(gs.Node(op, f"{self.prefix}/{op}_{self.count}", attrs or {}, inputs, [out]))
        return out

    def unsqueeze(self, tensor: gs.Tensor, axis: int, dtype=None) -> gs.Variable:
        if self.opset >= 13:
            return self.op("Unsqueeze", [tensor, self.const([axis])], dtype=dtype)
        return self.op("Unsqueeze", [tensor], {"axes": [axis]}, dtype=dtype)

    def shape(self, tensor: gs.Tensor, start: int, end: int | None = None) -> gs.Variable:
        if self.opset >= 15:
            attrs = {"start": start} if end is None else {"start": start, "end": end}
            return self.op("Shape", [tensor], attrs)
        full = self.op("Shape", [tensor])
        return self.op("Slice", [full, self.const([start]), self.const([end if end is not None else 2**62])])

    def elem(self, item: Elem) -> gs.Tensor:
        """A 1-element int64 vector holding `item`."""
        if isinstance(item, int):
            return self.const([item])
        if item.kind == "dim":
            return self.dim(item.tensor, item.index)
        flat = self.op("Reshape", [item.tensor, self.const([-1])], dtype=None)
        picked = self.op("Slice", [flat, self.const([item.index]), self.const([item.index + 1])], dtype=None)
        return self.op("Cast", [picked], {"to": 7})

    def dim(self, tensor: gs.Tensor, axis: int) -> gs.Variable:
        """A 1-D int64 tensor [tensor.shape[axis]] computed at run time."""
        if self.opset >= 15:
            return self.shape(tensor, axis, axis + 1)
        return self.op("Gather", [self.op("Shape", [tensor]), self.const([axis])], {"axis": 0})

    def scalar(self, vector: gs.Tensor, dtype) -> gs.Variable:
        """A 1-element int64 vector as a scalar of `dtype` (Range limits are scalars of the start's type)."""
        squeezed = self.op("Squeeze", [vector])
        return self.op("Cast", [squeezed], {"to": onnx_type(dtype)}, dtype=dtype)

    def vector(self, entries: Sequence[int | tuple[gs.Tensor, int]]) -> gs.Tensor:
        """A 1-D int64 shape vector: ints stay constants, (tensor, axis) entries become Shape(tensor)[axis]."""
        if all(isinstance(e, int | np.integer) for e in entries):
            return self.const([int(e) for e in entries])
        pieces: list[gs.Tensor] = []
        run: list[int] = []
        for entry in entries:
            if isinstance(entry, int | np.integer):
                run.append(int(entry))
                continue
            if run:
                pieces.append(self.const(run))
                run = []
            pieces.append(self.dim(entry[0], entry[1]))
        if run:
            pieces.append(self.const(run))
        return pieces[0] if len(pieces) == 1 else self.op("Concat", pieces, {"axis": 0})


def onnx_type(dtype) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
