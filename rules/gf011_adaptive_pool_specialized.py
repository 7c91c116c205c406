"""GF011 adaptive-pool-specialized."""

from __future__ import annotations

import re
from collections.abc import Iterator

from graphfix.analysis.context import RuleContext
from graphfix.core.rule import Finding, Rejection, Rule

ADAPTIVE = re.compile(r"(?:^|/)\s*([^/:]*):\s*torch\.nn\.modules\.pooling\.(Adaptive(?:Avg|Max)Pool[123]d)(?=/|$)")
POOLS = frozenset({"AveragePool", "MaxPool"})
HINT = ("Export the pooled axis static, or pool over explicit bins in the module (an output size of 1 is "
        "`x.mean(-1, keepdim=True)` or `amax`, which export at every size), and re-export.")


class AdaptivePoolSpecialized(Rule):
    """An adaptive pool that the dynamo exporter wrote as a pool of fixed kernel along a dynamic axis.

    ## What it does
    Reads the module path the dynamo exporter writes on each node (its `namespace` metadata) and finds an
    AveragePool or MaxPool written for `nn.AdaptiveAvgPool1d/2d/3d` or `nn.AdaptiveMaxPool1d/2d/3d` whose kernel
    is more than 1 along an input axis the graph declares dynamic. An adaptive pool returns its output size at
    every input size; torch.export decomposes one whose output size divides the export size into a pool of kernel
    and stride `export size / output size` (`AdaptiveAvgPool1d(8)` at 40 frames: kernel 5), which returns
    `T // 5` positions, not 8, at every other length (the graph declares it `(t//5)`). An axis an adaptive pool
    keeps (`(None, 1)`) has kernel 1 there, and a static axis is pooled as PyTorch pools it: neither is reported.
    Not found: an output size that does not divide the export size, which torch.export decomposes into gathers
    over bins whose window length is fixed at export (torchvision's AlexNet at 96 by 128), nor a TorchScript
    export, which carries no module path (its exporter refuses such a pool on a dynamic axis).

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
        modules = _adaptive_modules(ctx.model)
        if not modules:
            return
        for node in ctx.graph.nodes:
            module = modules.get(node.name)
            if node.op not in POOLS or module is None or not node.inputs:
                continue
            name, kind = module
            shape = ctx.shape(node.inputs[0]) or []
            kernel = list(node.attrs.get("kernel_shape", []))
            spatial = shape[2:] if len(shape) == len(kernel) + 2 else []
            pooled = [(axis + 2, dim, k) for axis, (dim, k) in enumerate(zip(spatial, kernel, strict=False))
                      if k > 1 and isinstance(dim, str)]
            if not pooled:
                yield self.reject(f"{node.op} '{node.name}' of {kind} '{name}' pools no dynamic axis with a kernel "
                                  f"above 1 (input {shape}, kernel {kernel})", nodes=[node.name])
                continue
            axis, dim, k = pooled[0]
            yield self.finding(
                f"{kind} '{name}' is written as {node.op} '{node.name}' with kernel {kernel}, {k} along axis {axis}, "
                f"which is dynamic ({_dim(dim)}): it returns the input's length divided by {k} there, where the "
                "adaptive pool returns its output size at every size; the exporter fixed the pool at the export "
                "size", nodes=[node.name], tensors=[node.inputs[0].name, node.outputs[0].name], hint=HINT)


def _dim(dim: str) -> str:
    """A dim's name as the message gives it: shape inference's own (`unk__3`) say nothing."""
    return "a length the graph computes" if re.fullmatch(r"unk__\d+", dim) else f"'{dim}'"


def _adaptive_modules(model) -> dict[str, tuple[str, str]]:
    """Node name -> (module name, class name) for the nodes the dynamo exporter wrote for an adaptive pool (the
    innermost one its `namespace` names)."""
    found = {}
    for node in model.graph.node:
        namespace = next((entry.value for entry in node.metadata_props if entry.key == "namespace"), "")
        matches = ADAPTIVE.findall(namespace)
        if matches and node.name:
            found[node.name] = matches[-1]
    return found
