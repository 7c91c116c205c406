"""Weights kept apart: a repaired model travels as a light proto plus the original weight tensors, uncopied.

A fix edits a graph's structure, almost never its weights. So when a repaired graph is exported, every large
inline weight becomes a *stub* (an external-data reference with name, type and dims, no bytes) and the original
`TensorProto` is recorded by name in a `Weights` map. The light proto then goes through shape inference, onnxsim
(which sees the stubs as graph inputs, see `graphfix.pipeline.simplify`) and the rules without ever copying the
weights; `graphfix.io.saving` streams them into the output file from the original tensors, and `materialize`
builds a full proto only when a caller asks for one (the Python API's `result.model`).

Weights that a constant-foldable node reads stay inline, so that onnxsim folds exactly what it would fold in
the full model.

A weight is a TensorProto, or, for a model parsed light (graphfix.io.mapped), a `MappedTensor` whose bytes stay
in the model file: `weight_array`, `weight_proto` and `attach` read either.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from graphfix.io.external_data import STUB_LOCATION, is_stub, tensor_nbytes
from graphfix.io.mapped import MappedTensor, MappedValues
from graphfix.io.protos import copy_without_initializers
from graphfix.io.sources import remember, source_proto

DETACH_MIN_BYTES = 64 << 10  # smaller tensors are copied: cheap, and onnxsim may fuse them (biases, norms)

Weight = onnx.TensorProto | MappedTensor
Weights = dict[str, Weight]  # stub name -> the original tensor (whose own name may differ)


def stub(tensor: Weight, name: str | None = None) -> onnx.TensorProto:
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


def resolve(tensor: onnx.TensorProto, weights: Weights) -> Weight:
    """The real tensor behind a stub (named like the stub), or the tensor itself."""
    if not is_stub(tensor):
        return tensor
    real = weights.get(tensor.name)
    if real is None:
        raise ValueError(f"weight '{tensor.name}' was detached but is not in the weights map")
    if isinstance(real, MappedTensor):
        return real if real.name == tensor.name else real.renamed(tensor.name)
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
            tensor.CopyFrom(weight_proto(resolve(tensor, weights)))
    return full


def weight_proto(weight: Weight) -> onnx.TensorProto:
    """The weight as a TensorProto with its values (a mapped one's bytes copied)."""
    return weight.to_proto() if isinstance(weight, MappedTensor) else weight


def weight_array(weight: Weight) -> np.ndarray:
    """The weight's values: a mapped one's read-only view of the file, an inline one's copy."""
    return weight.array() if isinstance(weight, MappedTensor) else onnx.numpy_helper.to_array(weight)


def weight_bytes(weight: Weight) -> bytes | memoryview:
    """The raw bytes of a weight that keeps its values in `raw_data` (a mapped one's, in the file)."""
    return weight.data() if isinstance(weight, MappedTensor) else weight.raw_data


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
    for tensor in _every_tensor(graph):
        proto = source_proto(tensor)
        real = weights.get(tensor.name)
        if proto is not None and real is not None and is_stub(proto):
            tensor.values = _lazy(real)
            remember(tensor, real)


@contextmanager
def detached(graph: gs.Graph, weights: Weights) -> Iterator[None]:
    """While exporting, large inline weights that no foldable node reads are stubs; `weights` records them. A
    mapped weight that a foldable node reads is exported inline (its bytes copied: onnxsim folds it)."""
    swapped: list[tuple[gs.Constant, Weight, int | None]] = []
    folded = _read_by_foldable_nodes(graph) | _read_in_subgraphs(graph)  # a subgraph's weights stay inline
    main = {id(t) for t in graph.tensors().values()}
    for tensor in _every_tensor(graph):
        proto = source_proto(tensor)
        if proto is None or not _detachable(proto):
            continue
        if id(tensor) in folded:
            if isinstance(proto, MappedTensor):  # exported inline, from the view (imported as a stub: EXTERNAL)
                swapped.append((tensor, proto, tensor.data_location))
                tensor.values, tensor.data_location = proto.array(), None
            continue
        if id(tensor) not in main:  # a subgraph's own weight: stays as it is
            continue
        swapped.append((tensor, proto, tensor.data_location))
        weights[tensor.name] = proto
        tensor.values = LazyValues(stub(proto, tensor.name))
    try:
        yield
    finally:
        for tensor, proto, location in swapped:
            tensor.values, tensor.data_location = _lazy(proto), location


def _every_tensor(graph: gs.Graph) -> list[gs.Tensor]:
    """The graph's tensors and its subgraphs', each once (an outer weight read only in an If's branch is one)."""
    found = {id(t): t for t in graph.tensors().values()}
    for sub in graph.subgraphs(recursive=True):
        found.update((id(t), t) for t in sub.tensors().values())
    return list(found.values())


def _read_in_subgraphs(graph: gs.Graph) -> set[int]:
    return {id(t) for sub in graph.subgraphs(recursive=True) for node in sub.nodes for t in node.inputs}


def _lazy(weight: Weight) -> LazyValues:
    return MappedValues(weight) if isinstance(weight, MappedTensor) else LazyValues(weight)


def _detachable(tensor: Weight) -> bool:
    if isinstance(tensor, MappedTensor):
        return True
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
