"""Output dims held at the export size: what the proof checks beside the declared shapes.

The TorchScript exporter names an output axis the user declared dynamic with a name of its own (`frames`), bound
to no input. Where the export size is known and, there, such an axis is as long as exactly one input dim (`frames`
is 40 where T was 40), a model that keeps it at 40 while T moves has held a size computed at export: a table or
a mask built with `int(T)` broadcast against one frame, an `expand(-1, int(T), -1)`. PyTorch's axis followed T;
the graph's never will. A length that only coincides there (a round-up to a multiple of 8 at T = 40) moves with
T and is not held; a length the model keeps on purpose and that happens to equal T at export is the one case
refused wrongly, and exporting at another size settles it.
"""

from __future__ import annotations

import numpy as np

from graphfix.analysis.sizes.limits import made_up_dim


class HeldSizes:
    """Learns, at the known export size, which free output axes equal one input dim there; then names each axis
    a run keeps at that value while its input dim has moved."""

    def __init__(self, declared: dict[str, list | None], watched: set[str], static: set[int]):
        """`declared`: the original's output dims; `watched`: the input dims an axis may follow; `static`: sizes
        the inputs and outputs declare (a length equal to one of them may be the model's own)."""
        self.declared, self.watched, self.static = declared, watched, static
        self.held: dict[tuple[str, int], tuple[str, int]] = {}  # (output, axis) -> (input dim, export value)

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

    def problems(self, outputs: dict[str, np.ndarray], binding: dict[str, int]) -> list[str]:
        lines = []
        for (name, axis), (dim, size) in self.held.items():
            shape = np.shape(outputs.get(name, ()))
            if axis < len(shape) and shape[axis] == size and binding.get(dim, size) != size:
                lines.append(f"output '{name}' axis {axis} ('{self.declared[name][axis]}', declared dynamic) stays "
                             f"{size}, {dim}'s export size, while {dim} is {binding[dim]}: a size computed at export "
                             "holds it")
        return lines
