"""What a rule sees: the graph in onnx-graphsurgeon's IR, shapes, constant values and the user's options."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphfix.analysis.broadcast import named
from graphfix.analysis.constants import Evaluator
from graphfix.core.rule import RuleOptions
from graphfix.io.external_data import tensor_values
from graphfix.io.mapped import MappedTensor
from graphfix.io.sources import source_proto


class RuleContext:
    """One analysis of one graph state. The engine makes a new one after every round of fixes."""

    def __init__(self, model: onnx.ModelProto, graph: gs.Graph, base_dir: Path | None, options: RuleOptions):
        self.model = model
        self.graph = graph
        self.base_dir = base_dir
        self.options = options
        self.notes: list[str] = []  # analysis that ran out of time; reported as info findings of the rule that asked
        self.declared: list[onnx.ValueInfoProto] = []  # the model's own value_info, which `model` (inferred) drops

    @cached_property
    def opset(self) -> int:
        for entry in self.model.opset_import:
            if entry.domain in ("", "ai.onnx"):
                return entry.version
        return 0

    @cached_property
    def tensors(self) -> dict[str, gs.Tensor]:
        return self.graph.tensors()

    @cached_property
    def graph_input_names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.graph.inputs)

    @cached_property
    def graph_output_names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.graph.outputs)

    def producer(self, tensor: gs.Tensor) -> gs.Node | None:
        """The node that writes `tensor`, or None for graph inputs and constants."""
        return tensor.inputs[0] if tensor.inputs else None

    def constant_value(self, tensor: gs.Tensor) -> np.ndarray | None:
        """The values of `tensor` if it is constant (an initializer or a Constant node's output), else None.

        External weights are memory-mapped, not read. Under --static, large external weights return None.
        """
        if isinstance(tensor, gs.Constant):
            proto = source_proto(tensor)
            if proto is None:  # created by a fix: its values are an array already
                return np.asarray(tensor.values)
            if isinstance(proto, MappedTensor):  # a weight of a model parsed light: a view of the file
                return proto.array()
            if proto.data_location == onnx.TensorProto.EXTERNAL and self.options.static:
                return None
            return tensor_values(proto, self.base_dir)
        node = self.producer(tensor)
        if node is not None and node.op == "Constant" and "value" in node.attrs:
            value = node.attrs["value"]
            return self.constant_value(value) if isinstance(value, gs.Constant) else np.asarray(value)
        return None

    @cached_property
    def evaluator(self) -> Evaluator:
        """The shared evaluator of this graph state: folded constants and symbolic shape vectors."""
        return Evaluator(self.constant_value, self.shape)

    @cached_property
    def symbolic_shapes(self) -> dict[str, list[int | str | None]]:
        """Shapes from onnxruntime's symbolic shape inference with auto-merge (names for dynamic dims; a dim that
        meets a constant is merged with it, which reveals export-time sizes); {} when it fails.

        Slower than onnx's shape inference: compute it only when a rule has a candidate that needs it.
        """
        return self._symbolic(merge=True)

    @cached_property
    def unmerged_shapes(self) -> dict[str, list[int | str | None]]:
        """Like `symbolic_shapes` but without auto-merge: dim names survive a broken graph (partial results)."""
        return self._symbolic(merge=False)

    def _symbolic(self, merge: bool) -> dict[str, list[int | str | None]]:
        """Time-bounded symbolic inference; why it is incomplete goes to `self.notes` for the engine to report."""
        from graphfix.analysis.shapes import symbolic_inference

        result = symbolic_inference(self.model, merge=merge)
        if result.incomplete:
            self.notes.append(result.incomplete[-1]
                              + (f" (and {len(result.incomplete) - 1} more)" if len(result.incomplete) > 1 else ""))
        return result.shapes

    def shape(self, tensor: gs.Tensor) -> list[int | str | None] | None:
        """The tensor's shape: ints for static dims, strings for named dynamic dims, None when unknown."""
        if tensor.shape is None:
            return None
        return [d if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) else None) for d in tensor.shape]

    def shape_filled(self, tensor: gs.Tensor) -> list[int | str | None] | None:
        """`shape`, its unknown dims (None, onnx's `unk__N`) filled from `unmerged_shapes`, which is computed where
        one is first met: onnx's inference loses a Reshape's output beside a baked entry (`[B, 13, 16]` from a
        Concat), and the echo check and GF012 read the axes such a tensor is normalized or summed over."""
        dims = self.shape(tensor)
        if dims is None or all(isinstance(d, int) or named(d) for d in dims):
            return dims
        inferred = self.unmerged_shapes.get(tensor.name)
        if inferred is None or len(inferred) != len(dims):
            return dims
        return [d if isinstance(d, int) or named(d) else i for d, i in zip(dims, inferred, strict=True)]
