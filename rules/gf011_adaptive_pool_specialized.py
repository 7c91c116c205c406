"""GF011 adaptive-pool-specialized."""

from __future__ import annotations

import re
from collections.abc import Iterator

from graphfix.analysis.context import RuleContext
from graphfix.analysis.sizes import sizes_of
from graphfix.core.rule import Finding, Rejection, Rule, Severity

ADAPTIVE = re.compile(r"(?:^|/)\s*([^/:]*):\s*torch\.nn\.modules\.pooling\.(Adaptive(?:Avg|Max)Pool[123]d)(?=/|$)")
# the call in a stack trace's innermost frame: torch's, or timm's adaptive_avgmax_pool2d, select_adaptive_pool2d
CALLED = re.compile(r"adaptive_\w*pool[123]d\b")
STACK = "pkg.torch.onnx.stack_trace"
POOLS = frozenset({"AveragePool", "MaxPool"})
HINT = ("Export the pooled axis static, or pool over explicit bins in the module (an output size of 1 is "
        "`x.mean(-1, keepdim=True)` or `amax`, which export at every size), and re-export.")


class AdaptivePoolSpecialized(Rule):
    """An adaptive pool that the dynamo exporter wrote as a pool of fixed kernel along a dynamic axis.

    ## What it does
    Reads what the dynamo exporter writes on each node, its module path (`namespace`) and its stack trace, and finds
    an AveragePool or MaxPool written for `nn.AdaptiveAvgPool1d/2d/3d` or `nn.AdaptiveMaxPool1d/2d/3d`, or for a
    call of `F.adaptive_avg_pool1d` and its kin in the stack trace's innermost frame (a user's module, a subclass,
    timm's `SelectAdaptivePool2d('avgmax')`), whose kernel is more than 1 along an axis whose length varies. An
    adaptive pool returns its output size at every input size; torch.export decomposes one whose output size divides
    the export size into a pool of kernel and stride `export size / output size` (`AdaptiveAvgPool1d(8)` at 40
    frames: kernel 5), which returns `T // 5` positions, not 8, at every other length (the graph declares it
    `(t//5)`). The length is read from onnx's inference, then from the size analysis where onnx leaves it open: a
    length padded and cropped to 16 before the pool is 16 at every size, and pooled as PyTorch pools it. A length
    `x[..., :16]` of a dynamic one is 16 from 16 on: a warning (torch.export's `Dim("t", min=16)` says the model
    takes no less, which the graph does not keep). An axis an adaptive pool keeps (`(None, 1)`) has kernel 1 there,
    and a static axis is pooled as PyTorch pools it: neither is reported. Not found: an output size that does not
    divide the export size, which torch.export decomposes into gathers over bins (torchvision's AlexNet at 96 by
    128), a 2-d or 3-d pool exported where its input already had the output size (kernel 1, the graph of a kept
    `None` axis; a 1-d pool keeps none, and is found), nor a TorchScript export, which carries no module path (its
    exporter refuses such a pool on a dynamic axis).

    ## Why it breaks deployment
    The model runs at every size and returns a wrong shape (a classifier after the pool fails; a pyramid pooling
    module upsamples the wrong grid and returns wrong values), so nothing but PyTorch shows it: the graph itself
    looks healthy, and `repair` compares it with itself.

    ## Example
    ```python
    nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.AdaptiveAvgPool1d(8))
    # torch.onnx.export(..., dynamo=True, dynamic_axes={"x": {0: "b", 2: "t"}}) at t = 40:
    # AveragePool(kernel 5, stride 5), output [b, 4, (t//5)]: 9 positions at t = 48, where PyTorch gives 8
    ```

    ## Fix safety
    Not repaired: the graph holds the kernel, not the output size the module asked for (it is the export size
    divided by the kernel, and the export size is not in the graph).
    """

    code = "GF011"
    name = "adaptive-pool-specialized"

    def detect(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        pools = _adaptive_pools(ctx.model)
        if not pools:
            return
        for node in ctx.graph.nodes:
            if node.op not in POOLS or node.name not in pools or not node.inputs:
                continue
            what = pools[node.name]
            shape = ctx.shape(node.inputs[0]) or []
            kernel = list(node.attrs.get("kernel_shape", []))
            spatial = shape[2:] if len(shape) == len(kernel) + 2 else []
            one_d = bool(re.search(r"pool1d", what, re.IGNORECASE))  # keeps no axis: a kernel of 1 is fixed too
            pooled = [(axis + 2, k) for axis, (dim, k) in enumerate(zip(spatial, kernel, strict=False))
                      if isinstance(dim, str) and (k > 1 or (one_d and axis == len(spatial) - 1))]
            lengths = sizes_of(ctx).shape(node.inputs[0]) if pooled else None  # only where onnx leaves it open
            pooled = [(axis, k, lengths[axis] if lengths and axis < len(lengths) else None) for axis, k in pooled]
            pooled = [(axis, k, length) for axis, k, length in pooled if length is None or length.free_symbols]
            if not pooled:
                yield self.reject(f"{node.op} '{node.name}' of {what} pools no dynamic axis with a kernel above 1 "
                                  f"(input {shape}, kernel {kernel}; a length fixed before it is as PyTorch pools "
                                  "it)", nodes=[node.name])
                continue
            axis, k, length = pooled[0]
            returns = f"that length divided by {k}" if k > 1 else "that length (exported where it was the output size)"
            message = (f"{what} is written as {node.op} '{node.name}' with kernel {kernel}, {k} along axis {axis}, "
                       f"whose length is dynamic ({length if length is not None else 'as onnx infers it'}): it "
                       f"returns {returns} there, where the adaptive pool returns its output size at every size; the "
                       "exporter fixed the pool at the export size")
            floor = _floor(length)
            yield self.finding(
                message + (f", and the length is {floor} wherever the input reaches it (a model that takes no "
                           f"shorter input is right)" if floor else ""),
                nodes=[node.name], tensors=[node.inputs[0].name, node.outputs[0].name], hint=HINT,
                severity=Severity.WARNING if floor else Severity.ERROR)


def _floor(length) -> int | None:
    """c where `length` is Min(c, ...): `x[..., :16]` of a dynamic length is 16 from 16 on (torch.export's
    `Dim("t", min=16)` says the model takes no less, which the graph does not keep)."""
    if length is None or type(length).__name__ != "Min":
        return None
    return next((int(a) for a in length.args if a.is_Integer), None)


def _adaptive_pools(model) -> dict[str, str]:
    """Pool node name -> what the dynamo exporter wrote it for, where that is an adaptive pool: the innermost module of
    its `namespace` when it is one of torch.nn's (`AdaptiveAvgPool1d 'p'`), else the call of the innermost frame of
    its stack trace (`F.adaptive_avg_pool1d` of a user's module, of a subclass, of timm's SelectAdaptivePool2d)."""
    found = {}
    for node in model.graph.node:
        if node.op_type not in POOLS:
            continue
        meta = {entry.key: entry.value for entry in node.metadata_props}
        modules = ADAPTIVE.findall(meta.get("namespace", ""))
        called = CALLED.findall(meta.get(STACK, "").strip().splitlines()[-1] if meta.get(STACK, "").strip() else "")
        if node.name and modules:
            name, kind = modules[-1]
            found[node.name] = f"{kind} '{name or '(the model)'}'"
        elif node.name and called:
            found[node.name] = f"a call of {called[-1]}"
    return found
