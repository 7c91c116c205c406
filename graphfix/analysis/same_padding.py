"""Pads before a strided Conv or Pool that are TF-style 'SAME' padding at some lengths of the padded axis only: a pad
computed in Python from the size, of which the export kept one case (GF008).

    padded = list(window_pads(sizes))          # (pad or None, window, shape, amounts) for each padded window
    for pad, window, axes in same_pads(padded, lambda: export_sizes(...).values): ...

'SAME' pads a length n before a window reaching k at stride s by `max((ceil(n / s) - 1) * s + k - n, 0)` in all,
half of it (rounded down) before: (0, 1) for k = 3, s = 2 at even n, (1, 1) at odd n. A constant pair that is one
residue's only is what a trace keeps of a pad computed through `int(x.shape[-2])` (transformers' MobileNetV1/V2
`tf_padding`), and what a model that pads (0, 1) at every size leaves too (Stable Diffusion's VAE). Amounts that
vary with n yet are 'SAME' at some residues only are what torch.export keeps of the same code where it reads the
size as a symbol: one branch of `if n % s == 0:` (`max(k - n % s, 0)`, which pads a whole k at multiples of s).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from graphfix.core.windows import window_of

WINDOWS = ("Conv", "MaxPool", "AveragePool", "LpPool")
SAMPLES = range(64, 128)  # sizes each graph input's dims take at once, to read amounts that vary with the size


@dataclass
class SameAxis:
    """Axis `axis` (`length` long) padded by `pads` before a window reaching `reach` at `stride`: 'SAME' where the
    length's residue mod `stride` is in `right`; at residue `wrong[0]` the pads are `wrong[1]`, 'SAME' `wrong[2]`."""

    axis: int
    length: object
    pads: tuple
    reach: int
    stride: int
    right: tuple[int, ...]
    wrong: tuple[int, tuple[int, int], tuple[int, int]]

    @property
    def computed(self) -> bool:
        """The amounts vary with the size (torch.export kept a branch), rather than being constants."""
        return not all(_whole(p) for p in self.pads)


def same(reach: int, stride: int, length: int) -> tuple[int, int]:
    """TF 'SAME' padding's (before, after) for a window reaching `reach` at `stride` over `length` (>= stride)."""
    total = same_total(reach, stride, length)
    return total // 2, total - total // 2


def same_total(reach, stride: int, length):
    """TF 'SAME' padding's total, `max(reach - (length % stride or stride), 0)`, for integers or integer arrays
    (`reach` and `length` broadcast: graphfix.exporting.fit tries every reach at once); `(n % s or s)` is
    `(n - 1) % s + 1`, at n = 0 too."""
    total = reach - 1 - (length - 1) % stride
    return total * (total > 0)


def agree(pads: tuple[int, int], other: tuple[int, int], reach: int, stride: int, length: int) -> bool:
    """Whether the window reads the same over `length` padded either way: the same offset and as many windows (a
    (0, 1) before a 2-wide window of stride 2 is (0, 0) at even lengths: the last element is never read)."""
    count = (length + sum(pads) - reach) // stride
    return pads[0] == other[0] and count == (length + sum(other) - reach) // stride


def padded_windows(graph: gs.Graph) -> bool:
    """Whether the graph holds a Pad, or a window padded unevenly by its own pads (where the size analysis is
    worth running for `window_pads`)."""
    return any(node.op == "Pad" or (node.op in WINDOWS and _uneven(node.attrs.get("pads", ()))) for node in graph.nodes)


def window_pads(sizes) -> Iterator[tuple]:
    """Each window padded by a Pad of constant mode that feeds it alone (the window pads nothing itself), or by its
    own pads where they are uneven (an exporter's optimizer merged such a Pad into the Conv). -> (pad or None,
    window, input shape, amounts in ONNX's layout, ints or size expressions)."""
    for node in sizes.graph.nodes:
        if node.op in WINDOWS and node.inputs and (shape := sizes.shape(node.inputs[0])) \
                and len(own := node.attrs.get("pads", ())) == 2 * (len(shape) - 2) and _uneven(own):
            half = len(own) // 2
            yield None, node, shape, [0, 0, *own[:half], 0, 0, *own[half:]]
        if node.op != "Pad" or not node.inputs or not node.outputs or (len(node.inputs) > 3 and node.inputs[3].name) \
                or node.attrs.get("mode", "constant") != "constant" or len(node.outputs[0].outputs) != 1:
            continue
        window, shape = node.outputs[0].outputs[0], sizes.shape(node.inputs[0])
        amounts = sizes.value(node.inputs[1]) if len(node.inputs) > 1 else node.attrs.get("pads")  # opset < 11
        if window.op in WINDOWS and window.inputs[0] is node.outputs[0] and not any(window.attrs.get("pads", ())) \
                and window.attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID") and shape and amounts is not None \
                and len(amounts) == 2 * len(shape) and all(a is not None for a in amounts):
            yield node, window, shape, [int(a) if _whole(a) else a for a in amounts]


def same_pads(padded: list[tuple], exported: Callable[[], dict[str, int]]) -> Iterator[tuple]:
    """Those of `padded` that are 'SAME' at some residues of a strided axis' length only: constants uneven there (at
    the export size's residue, where `exported()` tells it: asked only of such a pad), or amounts that vary with
    the size for a window reaching past its stride (one that does not is `k - n % k`, GF008's whole window).
    -> (pad or None, window, [SameAxis])."""
    known = None
    for node, window, shape, amounts in padded:
        axes = []
        for j, (kernel, stride, dilation) in enumerate(_window_axes(window, len(shape) - 2), 2):
            n, pads = shape[j], (amounts[j], amounts[j + len(shape)])
            reach = dilation * (kernel - 1) + 1
            if n is None or _whole(n) or kernel < 1 or stride < 2 or dilation < 1:
                continue
            if _whole(pads[0]) and _whole(pads[1]):
                if pads[0] == pads[1]:  # a plain padding=1 is one residue's 'SAME' too
                    continue
                lengths = [stride * (reach + 2) + r for r in range(stride)]  # one of each residue, past the window
                right = [m % stride for m in lengths if agree(pads, same(reach, stride, m), reach, stride, m)]
                if right:
                    known = exported() if known is None else known
                    at = n.subs({s: known[s.name] for s in n.free_symbols if s.name in known})
                    right = [r for r in right if not _whole(at) or r == int(at) % stride]
                wrong = [(m % stride, pads, same(reach, stride, m)) for m in lengths if m % stride not in right]
            elif reach > stride:
                right, wrong = _sampled(n, pads, reach, stride)
            else:
                continue
            if right and wrong:
                axes.append(SameAxis(j, n, pads, reach, stride, tuple(sorted(set(right))), wrong[0]))
        if axes:
            yield node, window, axes


def pads_nothing_somewhere(window: gs.Node, spatial: int) -> bool:
    """Whether 'SAME' padding pads nothing before `window` at some length: a reach no longer than its stride on
    every axis (a 1 x 1 Conv's). A window reaching past its stride is padded by at least the difference at every
    length, so a Pad by zeros before it is no 'SAME' pad computed from the size (an `nn.ZeroPad2d(0)`, say)."""
    return all(dilation * (kernel - 1) + 1 <= stride for kernel, stride, dilation in _window_axes(window, spatial))


def _sampled(n, pads: tuple, reach: int, stride: int) -> tuple[list[int], list[tuple]]:
    """The residues of `n` where amounts that vary with the size are 'SAME', and where they are not (with what they
    pad there), read at SAMPLES (every graph input's dim at once)."""
    symbols = set().union(*(getattr(e, "free_symbols", set()) for e in (n, *pads)))
    right, wrong = [], []
    for size in SAMPLES:
        at = {symbol: size for symbol in symbols}
        try:
            length, got = int(n.xreplace(at)), tuple(p if _whole(p) else int(p.xreplace(at)) for p in pads)
        except (TypeError, ValueError):
            return [], []  # not a whole number there: nothing to compare
        if length < stride:
            continue
        want = same(reach, stride, length)
        if agree(got, want, reach, stride, length):
            right.append(length % stride)
        else:
            wrong.append((length % stride, got, want))
    return right, wrong


def _window_axes(window: gs.Node, spatial: int) -> list[tuple]:
    """(kernel, stride, dilation) per spatial axis of a Conv or Pool (kernel 0 where unknown; none where its
    attributes do not describe `spatial` axes)."""
    weight = window.inputs[1].shape if window.op == "Conv" and len(window.inputs) > 1 else None
    read = window_of(window.attrs, spatial, weight)
    if read is None:
        return []
    kernel = [k if isinstance(k, int) else 0 for k in read.kernel]
    return list(zip(kernel, read.strides, read.dilations, strict=True))


def _uneven(pads) -> bool:
    half = len(pads) // 2
    return len(pads) % 2 == 0 and any(b != e for b, e in zip(pads[:half], pads[half:], strict=True))


def _whole(value) -> bool:
    return isinstance(value, int) or bool(getattr(value, "is_Integer", False))
