"""Output dims held at the export size: what the proof checks beside the declared shapes.

The TorchScript exporter names an output axis the user declared dynamic with a name of its own (`frames`), bound
to no input. Where the export size is known and, there, such an axis is as long as exactly one input dim (`frames`
is 40 where T was 40), a model that keeps it at 40 at every other T, shorter and longer, has held a size computed
at export: a table or a mask built with `int(T)` broadcast against one frame, an `expand(-1, int(T), -1)`.
PyTorch's axis followed T; the graph's never will. A length that moves somewhere is not held: a cut to 40 on
purpose (21 at T = 21), a round-up to a multiple of 20 (60 at T = 43). A length the model keeps at 40 on purpose
at every size, where T happened to be 40 at export, is the one case refused wrongly; exporting at another size
settles it.
"""

from __future__ import annotations

import numpy as np

from graphfix.analysis.sizes.limits import made_up_dim


class HeldSizes:
    """Learns, at the known export size, which free output axes equal one input dim there; watches each run; then
    names each axis that stayed at that value at every size where its input dim moved, below it and above it."""

    def __init__(self, declared: dict[str, list | None], watched: set[str], static: set[int]):
        """`declared`: the original's output dims; `watched`: the input dims an axis may follow; `static`: sizes
        the inputs and outputs declare (a length equal to one of them may be the model's own)."""
        self.declared, self.watched, self.static = declared, watched, static
        self.held: dict[tuple[str, int], tuple[str, int]] = {}  # (output, axis) -> (input dim, export value)
        self.seen: dict[tuple[str, int], list[tuple[int, int]]] = {}  # (output, axis) -> (dim size, length) per run

    def learn(self, outputs: dict[str, np.ndarray], binding: dict[str, int]) -> None:
        """At the known export size `binding`: each free axis as long as exactly one watched input dim."""
        for name, value in outputs.items():
            dims = self.declared.get(name)
            if dims is None or len(dims) != np.ndim(value):
                continue
            for axis, (dim, size) in enumerate(zip(dims, np.shape(value), strict=True)):
                if not isinstance(dim, str) or not dim or dim in binding or made_up_dim(dim, name, axis):
                    continue
                equal = [d for d in self.watched if binding.get(d) == size]
                if len(equal) == 1 and size > 1 and size not in self.static:
                    self.held[(name, axis)] = (equal[0], int(size))

    def watch(self, outputs: dict[str, np.ndarray], binding: dict[str, int]) -> None:
        """A run's lengths along the axes learnt, where their input dim is away from its export size."""
        for (name, axis), (dim, size) in self.held.items():
            shape = np.shape(outputs.get(name, ()))
            if axis < len(shape) and binding.get(dim, size) != size:
                self.seen.setdefault((name, axis), []).append((binding[dim], int(shape[axis])))

    def problems(self) -> list[str]:
        lines = []
        for (name, axis), (dim, size) in self.held.items():
            seen = self.seen.get((name, axis), [])
            both_sides = any(d < size for d, _ in seen) and any(d > size for d, _ in seen)
            if both_sides and all(length == size for _, length in seen):
                at = ", ".join(str(d) for d, _ in sorted(seen))
                lines.append(f"output '{name}' axis {axis} ('{self.declared[name][axis]}', declared dynamic) stays "
                             f"{size}, {dim}'s export size, at {dim} = {at}: a size computed at export holds it")
        return lines
