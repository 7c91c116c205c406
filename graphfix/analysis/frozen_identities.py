"""Ops that do nothing because of the constants they were given: a Pad by zeros, a Tile by ones, a Resize by 1, a
Concat of an empty constant, a 1 x 1 pool of stride 1.

Nobody writes those on purpose; a trace leaves them where an amount or a kernel computed in Python from a size
was 0 or 1 at the export size: `F.pad(tokens, (0, 0, 0, 20 - int(n)))` at n = 20 (a fixed number of slots the
tokens are padded to), `avg_pool2d(f, (int(h) // 4, int(w) // 5))` at a 4 x 5 map (a fixed grid). At other sizes
PyTorch pads or pools to the model's fixed size, and the graph does not. A Reshape after one that bakes the size
at export (MultiheadAttention's `[20, B * heads, d]`) then equals the model's own constant as much as the size it
was traced at: rebuilding it from the size is a guess (helper 110: SAFE, exit 0, 16 tokens where PyTorch keeps 20).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

POOLS = frozenset({"AveragePool", "MaxPool", "LpPool"})


def sized_pools(upstream: list[gs.Node]) -> list[gs.Node]:
    """The pools among `upstream` (`upstream_nodes`) that change a length (a kernel or a stride past 1 not made up
    by pads): a pool has no weights, so its kernel may be sized in Python from the input (`avg_pool1d(f, int(n) //
    10)`, 10 slots whatever the length, a kernel of 2 at the export) and the graph holds the same attribute."""
    return [node for node in upstream if node.op in POOLS and _changes_length(node)]


def _changes_length(node: gs.Node) -> bool:
    kernel, strides = node.attrs.get("kernel_shape", ()), node.attrs.get("strides", ())
    pads = list(node.attrs.get("pads", ())) or [0] * 2 * len(kernel)
    return any(s > 1 for s in strides) or any(k - 1 != pads[j] + pads[j + len(kernel)] for j, k in enumerate(kernel))


def upstream_nodes(tensor: gs.Tensor) -> list[gs.Node]:
    """Every node upstream of `tensor`, each once."""
    found, seen, todo = [], set(), [tensor]
    while todo:
        current = todo.pop()
        producer = current.inputs[0] if current.inputs else None
        if producer is None or id(producer) in seen:
            continue
        seen.add(id(producer))
        found.append(producer)
        todo.extend(producer.inputs)
    return found


def frozen_identities(upstream: list[gs.Node], constant: Callable[[gs.Tensor], np.ndarray | None]) -> list[gs.Node]:
    """The ops among `upstream` (`upstream_nodes`) that are identities by their constants alone; `constant`: a
    tensor's value where constants alone compute it (the shared evaluator's)."""
    return [node for node in upstream if _identity_by_constants(node, constant)]


def _identity_by_constants(node: gs.Node, constant) -> bool:
    """A Pad by zeros (any mode), a Tile by ones, a Resize by scales of 1, a Concat with an empty constant, or a
    1 x 1 pool of stride 1 (helper 112: `mode="replicate"`, `t.repeat(1, 20 // int(n), 1)`, `scale_factor=(4 /
    int(h), ...)`, `cat([t, t.new_zeros(B, 20 - int(n), C)])`)."""
    if node.op == "Pad":
        pads = node.attrs.get("pads") if len(node.inputs) < 2 else constant(node.inputs[1])
        return pads is not None and np.size(pads) > 0 and not np.any(np.asarray(pads))
    if node.op in ("Tile", "Resize"):
        k = 1 if node.op == "Tile" else 2  # the repeats; the scales (sizes, a fourth input, are another thing)
        value = constant(node.inputs[k]) if len(node.inputs) > k and node.inputs[k].name else None
        sized = node.op == "Resize" and len(node.inputs) > 3 and node.inputs[3].name
        return value is not None and np.size(value) > 0 and bool(np.all(np.asarray(value) == 1)) and not sized
    if node.op == "Concat":
        return any(value is not None and value.size == 0 for value in map(constant, node.inputs))
    if node.op in POOLS:
        kernel, strides = node.attrs.get("kernel_shape", ()), node.attrs.get("strides", ())
        return bool(kernel) and all(k == 1 for k in kernel) and all(s == 1 for s in strides) and \
            not any(node.attrs.get("pads", ()))
    return False
