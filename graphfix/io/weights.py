"""Weights kept apart: a repaired model travels as a light proto plus the original weight tensors, uncopied.

A fix edits a graph's structure, almost never its weights. So when a repaired graph is exported, every large
inline weight becomes a *stub* (an external-data reference with name, type and dims, no bytes) and the original
`TensorProto` is recorded by name in a `Weights` map. The light proto then goes through shape inference, onnxsim
(which sees the stubs as graph inputs, see `graphfix.pipeline.simplify`) and the rules without ever copying the
weights; `graphfix.io.saving` streams them into the output file from the original tensors, and `materialize`
builds a full proto only when a caller asks for one (the Python API's `result.model`).

Weights that a constant-foldable node reads stay inline, so that onnxsim folds exactly what it would fold in
the full model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from graphfix.io.external_data import STUB_LOCATION, is_stub, tensor_nbytes
from graphfix.io.protos import copy_without_initializers
from graphfix.io.sources import remember, source_proto

DETACH_MIN_BYTES = 64 << 10  # smaller tensors are copied: cheap, and onnxsim may fuse them (biases, norms)

Weights = dict[str, onnx.TensorProto]  # stub name -> the original tensor (whose own name may differ)


def stub(tensor: onnx.TensorProto, name: str | None = None) -> onnx.TensorProto:
    """A bytes-free stand-in with the tensor's name, type and dims."""
    placeholder = onnx.TensorProto(name=name or tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                   data_location=onnx.TensorProto.EXTERNAL)
    entry = placeholder.external_data.add()
    entry.key, entry.value = "location", STUB_LOCATION
    return placeholder


def has_stubs(model: onnx.ModelProto) -> bool:
    return any(is_stub(t) for t in model.graph.initializer)


def stub_names(model: onnx.ModelProto) -> frozenset[str]:
    return frozenset(t.name for t in model.graph.initializer if is_stub(t))


def resolve(tensor: onnx.TensorProto, weights: Weights) -> onnx.TensorProto:
    """The real tensor behind a stub (named like the stub), or the tensor itself."""
    if not is_stub(tensor):
        return tensor
    real = weights.get(tensor.name)
    if real is None:
        raise ValueError(f"weight '{tensor.name}' was detached but is not in the weights map")
    if real.name != tensor.name:  # renamed by a fix: the output needs the new name
        renamed = onnx.TensorProto()
        renamed.CopyFrom(real)
        renamed.name = tensor.name
        return renamed
    return real


def materialize(model: onnx.ModelProto, weights: Weights) -> onnx.ModelProto:
    """A full copy of a light model, its stubs replaced by the weights they stand for."""
    full = onnx.ModelProto()
    full.CopyFrom(model)
    for tensor in full.graph.initializer:
        if is_stub(tensor):
            tensor.CopyFrom(resolve(tensor, weights))
    return full


def detach_inline(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Weights]:
    """A light copy of a whole model: its large inline weights become stubs (recorded, not copied)."""
    light = copy_without_initializers(model)
    weights: Weights = {}
    for tensor in model.graph.initializer:
        if _detachable(tensor):
            weights[tensor.name] = tensor
            light.graph.initializer.append(stub(tensor))
        else:
            light.graph.initializer.append(tensor)
    return light, weights


def attach(graph: gs.Graph, weights: Weights) -> None:
    """Give the stubs of an imported light graph their real values back (lazily: nothing is read or copied)."""
    if not weights:
        return
    for tensor in graph.tensors().values():
        proto = source_proto(tensor)
        real = weights.get(tensor.name)
        if proto is not None and real is not None and is_stub(proto):
            tensor.values = LazyValues(real)
            remember(tensor, real)


@contextmanager
def detached(graph: gs.Graph, weights: Weights) -> Iterator[None]:
    """While exporting, large inline weights that no foldable node reads are stubs; `weights` records them."""
    swapped: list[tuple[gs.Constant, onnx.TensorProto]] = []
    folded = _read_by_foldable_nodes(graph)
    for tensor in graph.tensors().values():
        proto = source_proto(tensor)
        if proto is None or not _detachable(proto) or id(tensor) in folded:
            continue
        weights[tensor.name] = proto
        swapped.append((tensor, proto))
        tensor.values = LazyValues(stub(proto, tensor.name))
    try:
        yield
    finally:
        for tensor, proto in swapped:
            tensor.values = LazyValues(proto)


def _detachable(tensor: onnx.TensorProto) -> bool:
    return (isinstance(tensor, onnx.TensorProto) and tensor.data_location != onnx.TensorProto.EXTERNAL
            and tensor.HasField("raw_data") and tensor_nbytes(tensor) >= DETACH_MIN_BYTES)


def _read_by_foldable_nodes(graph: gs.Graph) -> set[int]:
    """ids of the Constants read by a node whose inputs are all constant (onnxsim would fold that node).

    One pass in graph order; a node that comes before its producers (graph not sorted) is simply not
    folded here, which only keeps more weights detached."""
    constant: set[int] = set()
    read: set[int] = set()
    for node in graph.nodes:
        inputs = [t for t in node.inputs if t.name]
        if all(isinstance(t, gs.Constant) or id(t) in constant for t in inputs):
            constant.update(id(t) for t in node.outputs)
            read.update(id(t) for t in inputs if isinstance(t, gs.Constant))
    return read
