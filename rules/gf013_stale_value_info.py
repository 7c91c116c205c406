"""GF013 stale-value-info."""

from __future__ import annotations

from collections.abc import Iterator

import onnx

from graphfix.analysis.broadcast import named
from graphfix.analysis.context import RuleContext
from graphfix.analysis.sizes.ops import SAME_SHAPE
from graphfix.analysis.walk import within
from graphfix.core.rule import Finding, Fix, Rule, Safety, Severity

MEASURES = frozenset({"Shape", "Size"})  # what onnxruntime's constant folding turns into the declared numbers
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min"})
KEPT = 8  # ops that keep a shape followed from a declared tensor to a Shape that reads it
HINT = ("Drop the model's value_info before making inputs dynamic by hand (`del model.graph.value_info[:]`, then "
        "`onnx.shape_inference.infer_shapes`), or use `graphfix set-shape`, which does; re-export with dynamic axes "
        "rather than editing the inputs' dims.")


class StaleValueInfo(Rule):
    """Intermediate shapes the model declares (value_info) that contradict what its dynamic inputs compute.

    ## What it does
    Compares each shape of the model's value_info with onnx's shape inference from the graph inputs, which
    graphfix runs on the graph without them, and finds a dim the model declares static where inference carries a
    dynamic dim of an input (`T`, `2*T`). Such a declaration is left when the inputs of a model exported at one
    size are made dynamic by editing their dims (a script setting `dim_param`, a graph editor), or by a tool that
    kept the export's shapes. Where onnx leaves the dim unknown (`unk__3`) and a Shape reads the tensor,
    onnxruntime's symbolic inference says; elsewhere an unknown dim is no contradiction (the declaration may know
    more), nor is another number (onnx's inference of a pool with `ceil_mode` and pads is off by one where
    PyTorch's declaration is right). An error where such a tensor is declared whole (static), a warning where it
    is declared in part (`[B, 7, 4]`: onnxruntime 1.32 folds and fuses nothing with it, helpers 127 and 128).

    ## Why it breaks deployment
    onnxruntime trusts value_info: at any optimization level above `ORT_DISABLE_ALL` (the default session's) it
    folds `Shape` of such a tensor to the declared numbers. A mean `ReduceSum(r) / Shape(r)[1]` then divides by the
    export length at every length (wrong values, no error), and a Reshape built from that Shape fails at every
    other size (helper 126); a MatMul and its bias fused into a Gemm are reshaped to the declared size, and fail
    at every other (helper 128: a LayerNorm, Linear, ReLU block exported static and made dynamic by hand).
    graphfix's own analysis drops value_info and infers it again, and its probe runs with optimizations off:
    neither sees the declaration that a deployed session uses.

    ## Example
    ```python
    m = onnx.load("exported_at_T7.onnx")
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "T"   # the input made dynamic by hand
    onnx.save(m, "dynamic.onnx")   # value_info still says r is [2, 7, 4]: Shape(r)[1] is folded to 7
    ```

    ## Fix safety
    Safe: value_info is a hint, not a computation; the repair writes the shapes inference computes from the
    inputs in place of the contradicted ones, which changes no value the graph computes with optimizations off.
    """

    code = "GF013"
    name = "stale-value-info"
    fixable = True

    def detect(self, ctx: RuleContext) -> Iterator[Finding]:
        stale, whole = [], []
        for declared in ctx.declared:
            tensor = ctx.tensors.get(declared.name)
            given = _dims(declared)
            if tensor is None or given is None or (computed := _computed(ctx, tensor, given)) is None:
                continue
            stale.append((declared.name, given, computed))
            if all(isinstance(d, int) and d > 0 for d in given):
                whole.append(declared.name)
        if not stale:
            return
        shown = "; ".join(f"'{name}' {given} where the inputs give {computed}" for name, given, computed in stale[:3])
        more = f" (and {len(stale) - 3} more)" if len(stale) > 3 else ""
        yield self.finding(
            f"the model's value_info declares {len(stale)} intermediate shape(s) that its dynamic inputs contradict: "
            f"{shown}{more}; onnxruntime's optimizer (any level above disabled, the default session's) trusts them"
            + (f", and {', '.join(repr(n) for n in whole[:3])} declared whole: it folds a Shape of such a tensor to "
               "the declared numbers and reshapes a MatMul it fuses into a Gemm to them, so a deployed session "
               "computes for the declared size at every other size (wrong values, or a failure)" if whole else
               " (each declared in part, which onnxruntime 1.32 neither folds nor fuses with; other runtimes may "
               "read them)"),
            tensors=[name for name, _, _ in stale], hint=HINT, severity=None if whole else Severity.WARNING,
            fix=Fix(f"write the shapes inference computes for {len(stale)} value_info entr"
                    f"{'ies' if len(stale) > 1 else 'y'} in place of the declared ones", apply=_inferred,
                    safety=Safety.SAFE, reason="value_info is a hint: no value the graph computes changes"))


def _inferred(graph) -> None:
    """Nothing to edit: the graph holds the shapes inference computed (graphfix imports it so), and its export
    writes them as the value_info."""


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None] | None:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type" or not value.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value.type.tensor_type.shape.dim]


def _computed(ctx: RuleContext, tensor, given: list) -> list | None:
    """The shape the graph computes for `tensor` where it has a dim of an input (named) at a position `given`
    holds a number, else None. onnx's inference first; onnxruntime's symbolic one where onnx leaves such a dim
    unknown and a Shape reads the tensor (helper 127: `Reshape(x, [0, -1, 2])` declared `[2, 14, 2]`). Numbers
    against numbers are not compared: onnx's inference of a pool with `ceil_mode` and pads is off by one where
    PyTorch's declaration is right (helper 127)."""
    computed = ctx.shape(tensor)
    if computed is None or len(computed) != len(given):
        return None
    if _named_at_a_number(given, computed):
        return computed
    if any(isinstance(g, int) and g > 0 and not named(c) and not isinstance(c, int) for g, c in zip(given, computed,
                                                                                                 strict=True)) \
            and _measured(tensor) and (filled := ctx.shape_filled(tensor)) is not None \
            and len(filled) == len(given) and _named_at_a_number(given, filled):
        return filled
    return None


def _named_at_a_number(given: list, computed: list) -> bool:
    return any(isinstance(g, int) and g > 0 and named(c) for g, c in zip(given, computed, strict=True))


def _measured(tensor) -> bool:
    """Whether a Shape or Size reads the tensor, or what keeps its shape (an elementwise op, an Identity: onnxruntime
    carries the declared shape through them, helper 127), within KEPT ops: only then is onnxruntime's symbolic
    inference asked for a dim onnx's leaves unknown."""
    return within([tensor], KEPT, lambda op, _: op.op in MEASURES, lambda op: op.op in SAME_SHAPE | ELEMENTWISE,
                 lambda op: op.outputs[:1])
