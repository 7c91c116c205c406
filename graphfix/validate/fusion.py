"""The one rewrite of the graph that onnxruntime runs for a proof (never of the model graphfix writes): a large
weight's Transpose feeding MatMul runs as `FusedMatMul(x, W, transB=1)`.

Validation runs with graph optimizations off (graphfix.validate.runner), so a tied embedding's `Transpose(W)`
before the language-model head would allocate a transposed copy of the table at every run: 622 MB on a
Qwen3-sized vocabulary, a third of the whole repair's peak. onnxruntime's default optimization level makes this
same fusion (MatMulTransposeFusion) in every deployment, and FusedMatMul calls the same GEMM with the operand
transposed in place. Only weights of at least MIN_BYTES are fused; every other node runs as written.

    runnable = transposes_fused(proto, fed={})   # the proto itself when nothing is fused
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


def transposes_fused(proto: onnx.ModelProto, fed: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """`proto`, or a copy where each 2-D float weight (an initializer, or a graph input fed with a weight's array)
    of MIN_BYTES or more, transposed [1, 0] and read only as MatMul's second operand, goes to FusedMatMul."""
    sites = _sites(proto.graph, fed)
    if not sites or proto.ByteSize() > COPY_LIMIT:
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    fused = set()
    for transpose in sites:
        fused.add(transpose.output[0])
    nodes = []
    for node in out.graph.node:
        if node.op_type == "Transpose" and node.output[0] in fused:
            continue
        if node.op_type == "MatMul" and node.input[1] in fused:
            weight = next(t.input[0] for t in sites if t.output[0] == node.input[1])
            node = helper.make_node("FusedMatMul", [node.input[0], weight], list(node.output), name=node.name,
                                    domain=DOMAIN, transB=1)
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return out


def _sites(graph: onnx.GraphProto, fed: Mapping[str, np.ndarray]) -> list[onnx.NodeProto]:
    """The Transpose nodes to fuse away: a large 2-D float weight, perm [1, 0], read by MatMul as B and nothing
    else (not an output, not another op or a subgraph, not a MatMul's first operand)."""
    sizes = {t.name: (list(t.dims), t.data_type) for t in graph.initializer}
    sizes.update({name: (list(a.shape), onnx.TensorProto.FLOAT if a.dtype == np.float32 else None)
                  for name, a in fed.items()})
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, k))
    kept = {o.name for o in graph.output} | set(_read_in_subgraphs(graph))
    sites = []
    for node in graph.node:
        if node.op_type != "Transpose" or len(node.input) != 1 or node.input[0] not in sizes:
            continue
        dims, dtype = sizes[node.input[0]]
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
        if len(dims) != 2 or perm != [1, 0] or dtype != onnx.TensorProto.FLOAT or 4 * math.prod(dims) < MIN_BYTES:
            continue
        uses = readers.get(node.output[0], [])
        if uses and node.output[0] not in kept and all(n.op_type == "MatMul" and k == 1 for n, k in uses):
            sites.append(node)
    return sites


def _read_in_subgraphs(graph: onnx.GraphProto):
    """Every name an If, Loop or Scan body reads, at any depth (a body may read the outer graph's tensors)."""
    for node in graph.node:
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                for inner in body.node:
                    yield from inner.input
                yield from _read_in_subgraphs(body)
