"""The one rewrite of the graph that onnxruntime runs for a proof (never of the model graphfix writes): a large
weight's Transpose feeding MatMul runs as `FusedMatMul(x, W, transB=1)`.

Validation runs with graph optimizations off (graphfix.validate.runner), so a tied embedding's `Transpose(W)`
before the language-model head would allocate a transposed copy of the table at every run: 622 MB on a
Qwen3-sized vocabulary, a third of the whole repair's peak. onnxruntime's default optimization level makes this
same fusion (MatMulTransposeFusion) in every deployment, and FusedMatMul calls the same GEMM with the operand
transposed in place. Only weights of at least MIN_BYTES are fused; every other node runs as written.

    runnable, fused = transposes_fused(proto, fed={})   # the proto itself, and no names, when nothing is
    error = as_written(error, fused)                    # onnxruntime's message naming MatMul, as the file has it
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper

MIN_BYTES = 16 << 20  # smaller weights: the copy costs little, the graph runs exactly as written
COPY_LIMIT = 64 << 20  # a proto carrying more inline bytes than this is not copied to be rewritten
DOMAIN = "com.microsoft"
STANDARD = ("", "ai.onnx")  # the domains of the ops fused away


def transposes_fused(proto: onnx.ModelProto, fed: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, frozenset[str]]:
    """`proto`, or a copy where each 2-D float weight (an initializer, or a graph input fed with a weight's array)
    of MIN_BYTES or more, transposed [1, 0] and read only as MatMul's second operand, goes to FusedMatMul; and the
    names of the MatMul nodes that now run fused (for `as_written`)."""
    sites = _sites(proto.graph, fed)
    if not sites or proto.ByteSize() > COPY_LIMIT:
        return proto, frozenset()
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    weight_of = {t.output[0]: t.input[0] for t in sites}
    nodes, fused = [], set()
    for node in out.graph.node:
        if node.op_type == "Transpose" and node.output[0] in weight_of:
            continue
        if node.op_type == "MatMul" and node.input[1] in weight_of:
            fused.add(node.name)
            node = helper.make_node("FusedMatMul", [node.input[0], weight_of[node.input[1]]], list(node.output),
                                    name=node.name, domain=DOMAIN, transB=1)
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return out, frozenset(fused)


def as_written(error: str, fused: frozenset[str]) -> str:
    """onnxruntime's message about a fused node, naming the op of the file (`running MatMul node`), so that a
    failure is attributed and compared as the model has it."""
    if fused and "FusedMatMul" in error and any(f"'{name}'" in error or f"({name})" in error for name in fused):
        return error.replace("FusedMatMul", "MatMul")
    return error


def _sites(graph: onnx.GraphProto, fed: Mapping[str, np.ndarray]) -> list[onnx.NodeProto]:
    """The Transpose nodes to fuse away: a large 2-D float weight, perm [1, 0], read by MatMul as B and nothing
    else (not an output, not another op or a subgraph, not a MatMul's first operand); only where the unfused graph
    is well formed around it (onnxruntime would refuse a clash the fusion removed: a second producer of the
    transposed name, a declared type it does not have, two nodes of one name, an op of another domain) and the
    weight cannot be overridden by a feed (an initializer that is also a graph input)."""
    inputs = {i.name for i in graph.input}
    sizes = {t.name: (list(t.dims), t.data_type) for t in graph.initializer if t.name not in inputs}
    sizes.update({name: (list(a.shape), onnx.TensorProto.FLOAT if a.dtype == np.float32 else None)
                  for name, a in fed.items()})
    candidates = [n for n in graph.node if _transposes_a_weight(n, sizes)]
    if not candidates:
        return []  # the common case, paid once per graph: no map of readers
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    producers: dict[str, int] = {}
    names: dict[str, int] = {}
    for node in graph.node:
        names[node.name] = names.get(node.name, 0) + 1
        for k, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, k))
        for name in node.output:
            producers[name] = producers.get(name, 0) + 1
    kept = {o.name for o in graph.output} | set(_read_in_subgraphs(graph))
    declared = {v.name: v for v in graph.value_info}
    sites = []
    for node in candidates:
        out, uses = node.output[0], readers.get(node.output[0], [])
        if not uses or out in kept or producers[out] != 1 or names[node.name] != 1:
            continue
        if out in declared and not _declared_as_made(declared[out], sizes[node.input[0]][0]):
            continue
        if all(n.op_type == "MatMul" and k == 1 and n.domain in STANDARD and n.name and names[n.name] == 1
               for n, k in uses):
            sites.append(node)
    return sites



def _transposes_a_weight(node: onnx.NodeProto, sizes) -> bool:
    if node.op_type != "Transpose" or node.domain not in STANDARD or len(node.input) != 1 or len(node.output) != 1 \
            or node.input[0] not in sizes:
        return False
    dims, dtype = sizes[node.input[0]]
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
    return len(dims) == 2 and perm == [1, 0] and dtype == onnx.TensorProto.FLOAT and 4 * math.prod(dims) >= MIN_BYTES


def _declared_as_made(info: onnx.ValueInfoProto, dims: list[int]) -> bool:
    """Whether a declared type of the transposed weight is what the Transpose makes of `dims` (a dynamo export
    declares every value): float, and each declared dim the transposed one or a name."""
    tensor = info.type.tensor_type
    if not info.type.HasField("tensor_type") or tensor.elem_type != onnx.TensorProto.FLOAT:
        return False
    if not tensor.HasField("shape"):
        return True
    declared = tensor.shape.dim
    return len(declared) == 2 and all(not d.HasField("dim_value") or d.dim_value == size
                                      for d, size in zip(declared, dims[::-1], strict=True))


def _read_in_subgraphs(graph: onnx.GraphProto):
    """Every name an If, Loop or Scan body reads, at any depth (a body may read the outer graph's tensors)."""
    for node in graph.node:
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                for inner in body.node:
                    yield from inner.input
                yield from _read_in_subgraphs(body)
