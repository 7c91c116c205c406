"""Finding the first node where a candidate model's values leave the original's.

Both models get every tensor they share by name (node outputs present in both graphs) as extra outputs;
one run each at the same inputs, then the shared tensors are compared in the candidate's topological order.
The first one outside tolerance names the diverging node.
"""

from __future__ import annotations

import numpy as np
import onnx

from graphfix.validate.compare import compare_arrays
from graphfix.validate.runner import ModelRunner


def first_divergence(
    original: ModelRunner,
    candidate: ModelRunner,
    feeds: dict[str, np.ndarray],
    rtol: float,
    atol: float,
) -> dict | None:
    """{'node', 'op_type', 'tensor', 'max_abs', 'max_rel', ...} of the first differing shared tensor."""
    shared = shared_tensors(original.proto, candidate.proto)
    if not shared:
        return _no_shared_tensor("the models share no intermediate tensor names")
    exposed_original, exposed_candidate = original.exposing(shared), candidate.exposing(shared)
    before, after = exposed_original.run(feeds), exposed_candidate.run(feeds)
    if not (before.ok and after.ok):
        return _no_shared_tensor(f"exposing intermediate tensors failed: {before.error or after.error}")
    producers = _producers(candidate.proto)
    for name in shared:
        comparison = compare_arrays(name, before.outputs[name], after.outputs[name], rtol, atol)
        if comparison.ok:
            continue
        node = producers[name]
        return {
            "node": node.name,
            "op_type": node.op_type,
            "tensor": name,
            "max_abs": comparison.max_abs,
            "max_rel": comparison.max_rel,
            "problem": comparison.problem,
            "original_node": _producers(original.proto)[name].name,
        }
    return _no_shared_tensor("every shared tensor agrees; the difference is in nodes without a counterpart")


def shared_tensors(original: onnx.ModelProto, candidate: onnx.ModelProto) -> list[str]:
    """Node outputs present in both graphs, in the candidate's node order."""
    in_original = set(_producers(original))
    ordered = [out for node in candidate.graph.node for out in node.output if out]
    return [name for name in ordered if name in in_original]


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output if out}


def _no_shared_tensor(reason: str) -> dict:
    return {
        "node": None,
        "op_type": None,
        "tensor": None,
        "max_abs": None,
        "max_rel": None,
        "problem": reason,
    }
