"""Shape rules of the ops that regroup a tensor's elements into other dims, in the same order (Reshape, Flatten):
part of `OpShapes` (graphfix.analysis.sizes.ops). Their constraint is the element count: a Reshape's target holds
the input's count only where a baked entry is the size it was traced at (`flatten(1).view(B, int(T), D)`)."""

from __future__ import annotations

import onnx_graphsurgeon as gs


class RegroupShapes:
    """Mixed into OpShapes: `_in_shape`, `_in_value`, `_set`, `_require`, `_multiple` and `num` are its."""

    def _op_Reshape(self, node: gs.Node) -> None:
        shape, target = self._in_shape(node, 0), self._in_value(node, 1)
        if target is None:
            return
        allowzero = node.attrs.get("allowzero", 0)
        out = [(shape[j] if shape and j < len(shape) else None) if (t == 0 and not allowzero) else t
               for j, t in enumerate(target)]
        if shape is None or any(d is None for d in shape) or any(d is None for d in out):
            self._set(node, tuple(None if (d is None or d == -1) else d for d in out), tuple(target)
                      if self._in_value(node, 0) is not None else None)
            return
        total = self.num.mul(*shape)
        if -1 in out:
            rest = self.num.mul(*[d for d in out if d != -1])
            inferred = self.num.cancel(total / rest)
            out[out.index(-1)] = inferred
            length, chunk = self.num.numerator_denominator(inferred)
            if chunk.is_Integer and chunk > 1 and length.free_symbols:
                self._multiple(node, length, chunk)  # [B, T+1, 8] -> [B, -1, 4, 8]: T+1 must be a multiple of 4
        else:
            self._require("reshape", node, total, self.num.mul(*out), "element count")
        self._set(node, tuple(out), self._in_value(node, 0))

    def _op_Flatten(self, node: gs.Node) -> None:
        """[a, b, c] at axis 1 is [a, b * c]: the TorchScript exporter's `x.flatten(1)` of a 2-D result."""
        shape = self._in_shape(node, 0)
        if shape is None or any(d is None for d in shape):
            return
        axis = node.attrs.get("axis", 1)
        axis += len(shape) if axis < 0 else 0
        self._set(node, (self.num.mul(*shape[:axis]), self.num.mul(*shape[axis:])), self._in_value(node, 0))
