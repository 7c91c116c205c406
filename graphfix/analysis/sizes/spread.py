"""Shape rules of the ops that spread a tensor to sizes they are given (Tile, ConstantOfShape, a Resize to `sizes`)
or make one from numbers (Range): part of `OpShapes` (graphfix.analysis.sizes.ops), which they share
their helpers with."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphfix.io.sources import known_values

MAX_VECTOR = 16  # value tracking is for shape vectors only


class SpreadShapes:
    """Mixed into OpShapes: `_in_shape`, `_in_value`, `_set` and `num` are its."""

    def _op_Tile(self, node: gs.Node) -> None:
        shape, repeats = self._in_shape(node, 0), self._in_value(node, 1)
        if shape is None or repeats is None or len(repeats) != len(shape) or any(d is None for d in shape):
            return
        self._set(node, tuple(self.num.mul(d, self.num.expr(r)) for d, r in zip(shape, repeats, strict=True)))

    def _op_Resize(self, node: gs.Node) -> None:
        """Resized to its `sizes` (input 3); by `scales`, the analysis does not follow."""
        shape = self._in_shape(node, 0)
        sizes = node.inputs[3] if len(node.inputs) > 3 else None
        given = sizes is not None and (sizes.name or isinstance(sizes, gs.Constant))
        if not given or shape is None or node.attrs.get("axes"):
            return
        target = self._in_value(node, 3)
        if target is not None and len(target) == len(shape):
            self._set(node, tuple(self.num.expr(t) for t in target))

    def _op_ConstantOfShape(self, node: gs.Node) -> None:
        target = self._in_value(node, 0)
        if target is not None:
            fill = known_values(node.attrs["value"]) if node.attrs.get("value") is not None else np.zeros(1)
            value = tuple(int(fill.reshape(-1)[0]) if fill.size else 0 for _ in range(int(target[0]))) \
                if fill is not None and len(target) == 1 and self.num.expr(target[0]).is_number and \
                target[0] <= MAX_VECTOR else None
            self._set(node, tuple(target), value)

    def _op_Range(self, node: gs.Node) -> None:
        start, limit, delta = (self._in_value(node, k) for k in range(3))
        if start is None or limit is None or delta is None:
            return
        self._set(node, (self.num.ceiling(self.num.truediv(limit[0] - start[0], delta[0])),))
