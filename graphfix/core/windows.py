"""A Conv's, ConvTranspose's or Pool's window as its attributes give it, read one way for every module that needs
it (the size pass' output lengths, GF008's 'SAME' pads, the probe's minimum lengths): ONNX's defaults filled in,
and None where the attributes do not describe the input's spatial axes (a model from anywhere may give more
values than axes, or fewer: helper 156's window with three strides over a 2-d input crashed a rule).

    window = window_of(node.attrs, spatial=len(x) - 2, weight=w)
    for j in range(window.spatial): window.reach(j), window.strides[j], window.pads_at(j)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """Per spatial axis: the kernel (a Conv's from its weight's shape where its attribute is absent; None where
    unknown), stride, dilation and output padding; `pads` in ONNX's layout (every axis' begin, then every end)."""

    kernel: tuple
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    output_padding: tuple[int, ...]

    @property
    def spatial(self) -> int:
        return len(self.kernel)

    def reach(self, j: int):
        """How far one window reaches along axis j: `dilation * (kernel - 1) + 1` (None where the kernel is)."""
        return None if self.kernel[j] is None else self.dilations[j] * (self.kernel[j] - 1) + 1

    def pads_at(self, j: int) -> tuple[int, int]:
        """Axis j's (begin, end) pads."""
        return self.pads[j], self.pads[j + self.spatial]


def window_of(attrs: Mapping, spatial: int, weight: Sequence | None = None) -> Window | None:
    """The window of a node with these attributes over an input of `spatial` axes (`weight`: a Conv's weight shape,
    whose dims past the second are its kernel); None where an attribute has another number of values."""
    kernel = attrs.get("kernel_shape")
    if kernel is None and weight is not None and len(weight) == spatial + 2:
        kernel = list(weight)[2:]
    kernel = list(kernel) if kernel is not None else [None] * spatial
    read = {name: list(attrs.get(name) or [default] * spatial * width)
            for name, default, width in (("strides", 1, 1), ("pads", 0, 2), ("dilations", 1, 1),
                                         ("output_padding", 0, 1))}
    if spatial < 1 or len(kernel) != spatial or any(len(v) != spatial * (2 if name == "pads" else 1)
                                                    for name, v in read.items()):
        return None
    return Window(tuple(kernel), *(tuple(read[n]) for n in ("strides", "pads", "dilations", "output_padding")))
