"""Shape rules of the ops that spread a tensor to sizes they are given (Tile, ConstantOfShape, a Resize to `sizes`
or by `scales`) or make one from numbers (Range): part of `OpShapes` (graphfix.analysis.sizes.ops), which they
share their helpers with."""

from __future__ import annotations

from fractions import Fraction

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
        """Resized to its `sizes` (input 3), or by its `scales` (input 2; input 1 before opset 11), each dim
        `floor(d * scale)` as the spec has it; only scales whose products are exact in float (`_exact_scale`), and
        not `tf_crop_and_resize`, whose output also depends on the `roi`."""
        shape = self._in_shape(node, 0)
        if shape is None or node.attrs.get("axes"):
            return
        sizes = node.inputs[3] if len(node.inputs) > 3 else None
        if sizes is not None and (sizes.name or isinstance(sizes, gs.Constant)):
            target = self._in_value(node, 3)
            if target is not None and len(target) == len(shape):
                self._set(node, tuple(self.num.expr(t) for t in target))
            return
        index = 2 if len(node.inputs) > 2 else 1
        if index >= len(node.inputs) or node.attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
            return
        scales = self.constant(node.inputs[index])
        scales = None if scales is None or scales.ndim != 1 or len(scales) != len(shape) else \
            [_exact_scale(float(s)) for s in scales]
        if scales is not None and None not in scales:
            self._set(node, tuple(None if d is None else self.num.floor(self.num.truediv(self.num.mul(d, s.numerator),
                                                                                          s.denominator))
                                  for d, s in zip(shape, scales, strict=True)))

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


def _exact_scale(scale: float) -> Fraction | None:
    """A Resize scale as a fraction n / 2**k (n < 256, k <= 6) where `d * scale` is exact in float32 for any size
    below 2**16 (onnxruntime multiplies in float): 2, 0.5, 1.25; None for 1/3 and the like, whose rounded
    products the analysis would have to model."""
    exact = Fraction(scale) if np.isfinite(scale) and scale > 0 else None
    return exact if exact is not None and 64 % exact.denominator == 0 and exact.numerator < 256 else None
