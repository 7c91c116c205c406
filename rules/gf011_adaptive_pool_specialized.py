"""GF011 adaptive-pool-specialized."""

from __future__ import annotations

import re
from collections.abc import Iterator

from graphfix.analysis import pool_structure as structure
from graphfix.analysis.context import RuleContext
from graphfix.analysis.sizes import sizes_of
from graphfix.core.rule import Finding, Rejection, Rule, Severity

ADAPTIVE = re.compile(r"(?:^|/)\s*([^/:]*):\s*torch\.nn\.modules\.pooling\.(Adaptive(?:Avg|Max)Pool[123]d)(?=/|$)")
# the call in a stack trace's innermost frame: torch's, or timm's adaptive_avgmax_pool2d, select_adaptive_pool2d
CALLED = re.compile(r"adaptive_\w*pool[123]d\b")
STACK = "pkg.torch.onnx.stack_trace"
FX_NODE = "pkg.torch.onnx.fx_node"
POOLING_MODULE = "torch.nn.modules.pooling."
OWN_CALL = re.compile(r"\b(?:max|avg|lp)_pool[123]d\s*\(")  # `F.avg_pool2d(...)`: a model's own pool, called there
# the op torch.export decomposes an adaptive pool into, with its kernel and (avg) stride lists
DECOMPOSED = re.compile(r"target=torch\.ops\.aten\.(?P<op>max_pool2d_with_indices|avg_pool2d)\.default\]"
                        r"\(args = \(%\w+, \[(?P<kernel>[\d, ]+)\](?:, \[(?P<stride>[\d, ]+)\])?")
POOLS = frozenset({"AveragePool", "MaxPool"})
GATHERS = frozenset({"GatherND"})  # `input[..., idx_h, idx_w]`: torch.export's bins where the size does not divide
WATCHED = POOLS | GATHERS
UNNAMED = ("the node carries no metadata to name the module (a TorchScript export writes none; a dynamo export "
           "converted to an older opset, `opset_version=17`, drops it)")
HINT = ("Export the pooled axis static, or pool over explicit bins in the module (an output size of 1 is "
        "`x.mean(-1, keepdim=True)` or `amax`, which export at every size), and re-export.")


class AdaptivePoolSpecialized(Rule):
    """An adaptive pool that the dynamo exporter wrote for the export size along a dynamic axis (kernel or bins).

    ## What it does
    Reads what the dynamo exporter writes on each pool and GatherND node, its module path (`namespace`) and its
    stack trace, and finds an AveragePool or MaxPool written for `nn.AdaptiveAvgPool1d/2d/3d` or
    `nn.AdaptiveMaxPool1d/2d/3d`, or for a call of `F.adaptive_avg_pool1d` and its kin in the stack trace's
    innermost frame (a user's module, a subclass, timm's `SelectAdaptivePool2d('avgmax')`), or a 1-d one called in
    a function of the model's, where the stack trace keeps only forward's line, by the op torch.export decomposed it
    into (`max_pool2d_with_indices`, or `avg_pool2d` given a stride equal to its kernel, over an unsqueezed
    sequence; a model's `F.max_pool1d` writes a 1-d pool), whose kernel is more than 1 along an axis whose length
    varies. An adaptive pool returns its output size at every input size; torch.export decomposes one whose output
    size divides the export size into a pool of kernel and stride `export size / output size`
    (`AdaptiveAvgPool1d(8)` at 40 frames: kernel 5), which returns `T // 5` positions, not 8, at every other length
    (the graph declares it `(t//5)`). The length is read from onnx's inference, then from the size analysis where
    onnx leaves it open: a length padded and cropped to 16 before the pool is 16 at every size,
    and pooled as PyTorch pools it. A length `x[..., :16]` of a dynamic one is 16 from 16 on: a warning
    (torch.export's `Dim("t", min=16)` says the model takes no less, which the graph does not keep). An axis an
    adaptive pool keeps (`(None, 1)`) has kernel 1 there, and a static axis is pooled as PyTorch pools it: neither
    is reported.

    An output size that does not divide the export size is decomposed into gathers over bins laid out for that size
    (a GatherND the exporter writes for the pool, then a mean over bins of one length, or a sum unrolled over as many
    positions as a bin held at export): torchvision's AlexNet (`AdaptiveAvgPool2d((6, 6))`) at 96 by 128 or 191 by
    193, `AdaptiveAvgPool1d(7)` at 40 frames. The graph returns the output size at every size, but its bins are not
    PyTorch's elsewhere: wrong values, or a Gather out of range (AlexNet from 96 by 128 fails at 224). Found where
    the pool's input is dynamic along an axis (onnx's inference, then the size analysis: a length cropped to 16
    first is 16 at every size) and its output a constant above 1 there; a kept `None` axis stays dynamic, an output
    size of 1 is a mean over the whole axis. Not found: a 2-d or 3-d pool exported where its input already had the
    output size (kernel 1: the graph, metadata included, is node for node that of a kept `None` axis, which is right;
    a 1-d pool keeps none, and is found), nor a TorchScript export, which carries no module path (its exporter
    refuses such a pool on a dynamic axis), nor a 2-d adaptive pool called in a function of the model's (its graph
    and metadata are those of `F.avg_pool2d(x, k, k)` or `F.max_pool2d(x, k, return_indices=True)` there, as
    torchvision's RAFT pools its pyramid: the proof compares such a graph with itself). An adaptive max pool whose
    size does not divide is not exported by torch.onnx's dynamo exporter at all.

    A dynamo export converted to an older opset (`opset_version=17`) keeps no metadata (a TorchScript export
    writes none), and the graph's structure decides. Bins: a GatherND of windows whose positions are computed from
    the input's length at run time, then summed over a fixed count of positions of windows whose length grows with
    the input, is an error (no other reading: the sum was unrolled at export); a mean over whole windows of one
    length is a warning (a model's own windows write it too). Pool: a 1-d pool written as a 2-d pool of kernel
    (1, k), stride k, unpadded, between an Unsqueeze and a Squeeze is how torch.export writes
    `adaptive_avg_pool1d` (`nn.AvgPool1d` writes a 1-d pool), but a model's own `AvgPool2d((1, k))` writes it too:
    a warning. A 2-d or 3-d adaptive pool written as a pool is node for node
    `nn.AvgPool2d` and not reported (a classifier after it fails at other sizes, which GF000 and GF004 show).

    ## Why it breaks deployment
    The model runs at every size and returns a wrong shape (a classifier after the pool fails; a pyramid pooling
    module upsamples the wrong grid and returns wrong values), or, from bins, the right shape with wrong values (at
    some sizes a Gather out of range), so nothing but PyTorch shows it: the graph itself
    looks healthy, and `repair` compares it with itself.

    ## Example
    ```python
    nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.AdaptiveAvgPool1d(8))
    # torch.onnx.export(..., dynamo=True, dynamic_axes={"x": {0: "b", 2: "t"}}) at t = 40:
    # AveragePool(kernel 5, stride 5), output [b, 4, (t//5)]: 9 positions at t = 48, where PyTorch gives 8
    ```

    ## Fix safety
    Not repaired: the graph holds the kernel, not the output size the module asked for (it is the export size
    divided by the kernel, and the export size is not in the graph); bins laid out at export hold the output size
    but not the export size.
    """

    code = "GF011"
    name = "adaptive-pool-specialized"

    def detect(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        pools, gathers = _attributed(ctx.model)
        protos = {node.name: node for node in ctx.model.graph.node if node.name}
        pools |= _called_in_a_function(ctx, pools, protos)
        if pools:
            yield from self._pools(ctx, pools)
        for node in ctx.graph.nodes:
            if node.op in GATHERS and node.name in gathers:
                what, key = gathers[node.name]
                yield from self._bins(ctx, node, what, *_named_bins(node, what, key, protos))
            elif node.op in WATCHED and node.name in protos and not protos[node.name].metadata_props:
                # metadata dropped (a conversion to an older opset): only what the graph's structure shows
                yield from (self._unnamed_bins(ctx, node) if node.op in GATHERS else self._unnamed_pool(ctx, node))

    def _pools(self, ctx: RuleContext, pools: dict[str, tuple[str, str]]) -> Iterator[Finding | Rejection]:
        """The output size divides the export size: a pool of kernel `export size / output size`."""
        for node in ctx.graph.nodes:
            if node.op not in POOLS or node.name not in pools or not node.inputs:
                continue
            what = pools[node.name][0]
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


    def _pooled_axis(self, ctx: RuleContext, node, what: str, source, region: dict) -> tuple | Rejection:
        """(axis, its length, the output size there) of the first dynamic axis the gathered bins pool to a constant
        size above 1 (a kept None axis stays dynamic, an output size of 1 is a mean over the whole axis, a static
        axis is laid out as PyTorch lays it out), or why there is none."""
        shape = ctx.shape(source) or []
        ends = [t for n in region.values() for t in n.outputs if t.name in ctx.graph_output_names
                or any(c.name not in region for c in t.outputs)]
        out = next((ctx.shape(t) for t in ends if len(ctx.shape(t) or []) == len(shape) > 2), None)
        if out is None:
            return self.reject(f"{node.op} '{node.name}' of {what}: no output of its rank {len(shape)} found after it",
                               nodes=[node.name])
        fixed = [axis for axis in range(2, len(shape))
                 if isinstance(shape[axis], str) and isinstance(out[axis], int) and out[axis] > 1]
        lengths = sizes_of(ctx).shape(source) if fixed else None  # a length cropped to 16 before it is 16
        fixed = [(axis, lengths[axis] if lengths and axis < len(lengths) else None) for axis in fixed]
        fixed = [(axis, length) for axis, length in fixed if length is None or length.free_symbols]
        if not fixed:
            return self.reject(f"{node.op} '{node.name}' of {what} gathers no dynamic axis pooled to a size above 1 "
                               f"(input {shape}, output {out})", nodes=[node.name])
        axis, length = fixed[0]
        return axis, (length if length is not None else shape[axis]), out[axis]

    def _bins(self, ctx: RuleContext, node, what: str, source, region: dict) -> Iterator[Finding | Rejection]:
        """The output size does not divide the export size: gathers over bins laid out for the export size, the
        exporter's metadata naming the pool."""
        pooled = self._pooled_axis(ctx, node, what, source, region)
        if isinstance(pooled, Rejection):
            yield pooled
            return
        axis, length, size = pooled
        unrolled = [int(i) for n in region.values() if n.op == "Gather" and (i := _scalar_index(ctx, n)) is not None]
        means = any(n.op == "ReduceMean" for n in region.values())
        how = (f"a sum unrolled over up to {max(unrolled) + 1} positions of a bin, as many as one held at export"
               if unrolled else "a mean over bins of the one length they had at export" if means
               else "bins laid out at export")
        message = (f"{what} is written as gathers over bins ({how}) along axis {axis}, whose length is dynamic "
                   f"({length}), pooled to {size}: torch.export laid the bins out for an export size that {size} "
                   "does not divide, and at other sizes they are not PyTorch's bins (wrong values, or a Gather out of "
                   "range); the exporter fixed the pool at the export size")
        yield self.finding(message, nodes=[node.name], tensors=[source.name, node.outputs[0].name], hint=HINT,
                           severity=Severity.ERROR)

    def _unnamed_bins(self, ctx: RuleContext, node) -> Iterator[Finding | Rejection]:
        """A GatherND with no metadata: windows laid out from the input's length at run time (its indices computed,
        of a length that grows with the input), which the graph then reduces. A sum unrolled over k positions of
        windows whose length grows with the input leaves one hypothesis (an error); a mean over whole windows of
        one length leaves two (a warning)."""
        indices = node.inputs[1] if len(node.inputs) > 1 else None
        shape = sizes_of(ctx).shape(indices) if indices is not None and ctx.constant_value(indices) is None else None
        if not shape or not any(getattr(dim, "free_symbols", None) for dim in shape):
            return  # constant indices, or of one length at every size: fixed positions, a model's own choice
        source, region = structure.layout_source(node), structure.window_region(node)
        pooled = self._pooled_axis(ctx, node, f"GatherND '{node.name}'", source, region)
        if isinstance(pooled, Rejection):
            yield pooled
            return
        axis, length, size = pooled
        unrolled = structure.unrolled_window(sizes_of(ctx), ctx.tensors,
                                             structure.scalar_reads(ctx.constant_value, region))
        where = (f"GatherND '{node.name}' gathers {size} windows along axis {axis}, whose length is dynamic "
                 f"({length}), at positions computed from that length at run time")
        gone = f"; {UNNAMED}"
        tensors = [source.name, node.outputs[0].name]
        if unrolled is not None:
            count, window = unrolled
            yield self.finding(
                f"{where}, and adds up {count} positions of windows {window} long, read one at a time: the graph of "
                f"an adaptive pool to {size} that torch.export laid out in bins for an export size that {size} does "
                f"not divide, summed over as many positions as a bin held there{gone}. At other sizes a bin holds "
                f"more or fewer than {count} positions: wrong values, or a Gather out of range; the exporter fixed "
                "the pool at the export size", nodes=[node.name], tensors=tensors, hint=HINT, severity=Severity.ERROR)
        elif any(n.op == "ReduceMean" for n in region.values()):
            yield self.finding(
                f"{where}, and takes a mean over each whole window{gone}. That is the graph of an adaptive pool to "
                f"{size} laid out for an export size where every bin had one length (wrong at other sizes), or of a "
                "model's own windows of one length (right): the graph does not say which; compare with PyTorch at "
                "another size", nodes=[node.name], tensors=tensors, hint=HINT, severity=Severity.WARNING)
        else:
            yield self.reject(f"{where}, but no sum over the windows unrolled for a fixed count and no mean follows",
                              nodes=[node.name])

    def _unnamed_pool(self, ctx: RuleContext, node) -> Iterator[Finding | Rejection]:
        """A pool with no metadata. A 2-d or 3-d one is node for node `nn.AvgPool2d` or `nn.MaxPool2d` of that
        kernel: nothing to say. A 1-d pool written as a 2-d pool of kernel (1, k) between an Unsqueeze and a Squeeze
        is how torch.export writes `adaptive_avg_pool1d` (a 1-d `nn.AvgPool1d` is a 1-d pool), but a model may
        pool so itself: a warning."""
        if not structure.unsqueezed_1d(node, ctx.constant_value):
            return
        k = int(node.attrs["kernel_shape"][1])
        kind = "AdaptiveMaxPool1d" if node.op == "MaxPool" else "AdaptiveAvgPool1d"
        if list(node.attrs.get("strides", [1, 1])) != [1, k] or any(node.attrs.get("pads", [])):
            yield self.reject(f"{node.op} '{node.name}' of kernel (1, {k}) has strides {node.attrs.get('strides')} "
                              f"or pads: an adaptive pool that divides is one of stride {k}, unpadded",
                              nodes=[node.name])
            return
        shape = ctx.shape(node.inputs[0]) or []
        lengths = sizes_of(ctx).shape(node.inputs[0]) if len(shape) == 4 and isinstance(shape[3], str) else None
        length = lengths[3] if lengths and len(lengths) == 4 else None
        if k < 2 or length is None or not length.free_symbols:
            yield self.reject(f"{node.op} '{node.name}' of kernel (1, {k}) between an Unsqueeze and a Squeeze pools "
                              f"no dynamic axis with a kernel above 1 (input {shape})", nodes=[node.name])
            return
        yield self.finding(
            f"{node.op} '{node.name}' pools a dynamic length ({length}) with kernel and stride {k}, written as a "
            "2-d pool of kernel (1, k) between an Unsqueeze and a Squeeze: how torch.export writes an adaptive 1-d "
            f"pool whose output size divides the export length (`{kind}(n)` at {k}n), where `nn.{kind[8:]}` "
            f"writes a 1-d pool. {UNNAMED[0].upper()}{UNNAMED[1:]}: an adaptive pool returns n positions at every "
            f"length, this graph {length} // {k}; a model that pools by {k} itself is right. Compare with PyTorch at "
            "another length",
            nodes=[node.name], tensors=[node.inputs[0].name, node.outputs[0].name], hint=HINT,
            severity=Severity.WARNING)


def _floor(length) -> int | None:
    """c where `length` is Min(c, ...): `x[..., :16]` of a dynamic length is 16 from 16 on (torch.export's
    `Dim("t", min=16)` says the model takes no less, which the graph does not keep)."""
    if length is None or type(length).__name__ != "Min":
        return None
    return next((int(a) for a in length.args if a.is_Integer), None)


def _attributed(model) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    """Pool and GatherND node names -> (what, key) where the dynamo exporter wrote them for an adaptive pool. Only
    these ops' metadata is read (a Llama's thousands of stack traces are not)."""
    pools, gathers = {}, {}
    for node in model.graph.node:
        if node.op_type in WATCHED and node.name and (found := _attribution(node)):
            (pools if node.op_type in POOLS else gathers)[node.name] = found
    return pools, gathers


def _metadata(node) -> tuple[dict[str, str], str, str]:
    """A node's metadata as the dynamo exporter writes it, its module path (`namespace`) and the innermost frame of
    its stack trace."""
    meta = {entry.key: entry.value for entry in node.metadata_props}
    stack = meta.get(STACK, "").strip()
    return meta, meta.get("namespace", ""), stack.splitlines()[-1] if stack else ""


def _attribution(node) -> tuple[str, str] | None:
    """(what, key) where the dynamo exporter wrote `node` for an adaptive pool: the innermost module of its
    `namespace` when it is one of torch.nn's (`AdaptiveAvgPool1d 'p'`), else the call of the innermost frame of its
    stack trace (`F.adaptive_avg_pool1d` of a user's module, of a subclass, of timm's SelectAdaptivePool2d). The key
    is the same on every node of one pool: its module path (and, for a call, that frame)."""
    _, namespace, frame = _metadata(node)
    modules = list(ADAPTIVE.finditer(namespace))
    if modules:
        name, kind = modules[-1].groups()
        return f"{kind} '{name or '(the model)'}'", namespace[:modules[-1].end()]
    called = CALLED.findall(frame)
    if called:
        return f"a call of {called[-1]}", namespace.rsplit("/", 1)[0] + "\n" + frame
    return None


def _called_in_a_function(ctx: RuleContext, named: dict, protos: dict) -> dict[str, tuple[str, str]]:
    """Pools of an adaptive 1-d pool called in a function of the model's, whose stack trace keeps only forward's
    line (helper 147: `return summarize(h)`, `def summarize(h): return F.adaptive_max_pool1d(h, 4)`, written wrong
    with exit 0): a 2-d pool of kernel (1, k) between an Unsqueeze and a Squeeze (`structure.unsqueezed_1d`; a
    model's `F.max_pool1d` is a 1-d pool), that torch.export's metadata calls `max_pool2d_with_indices` (the
    adaptive max pool's; `F.max_pool2d` is `max_pool2d`) or `avg_pool2d` given a stride equal to its kernel (the
    adaptive average pool's), where the namespace holds no torch.nn pooling module and the frame calls no pool
    (`F.avg_pool2d(`: a model's own pool says so there). Not a 2-d pool: `F.avg_pool2d(c, 2, 2)` in a method
    (torchvision's RAFT builds its pyramid so, red team 151) writes what an adaptive 2-d pool writes."""
    found = {}
    for node in ctx.graph.nodes:
        if node.op not in POOLS or node.name in named or node.name not in protos:
            continue
        meta, namespace, frame = _metadata(protos[node.name])
        op = DECOMPOSED.search(meta.get(FX_NODE, ""))
        if op is None or POOLING_MODULE in namespace or OWN_CALL.search(frame) or \
                (op["op"].startswith("avg") and op["stride"] != op["kernel"]) or \
                not structure.unsqueezed_1d(node, ctx.constant_value):
            continue
        kind = "max" if op["op"].startswith("max") else "avg"
        found[node.name] = (f"an adaptive {kind} pool called outside forward's own line (torch.export's "
                            f"{op['op']} of kernel [{op['kernel']}] over an unsqueezed sequence; the stack trace "
                            "names no pool)", namespace.rsplit("/", 1)[0] + "\n" + frame)
    return found


def _named_bins(node, what: str, key: str, protos) -> tuple:
    """(what the pool pools, the nodes of the pool from `node` on), by the exporter's metadata."""
    source = structure.layout_source(
        node, lambda layout: layout.name in protos and _attribution(protos[layout.name]) == (what, key))
    return source, _region(node, key, protos)


def _region(start, key: str, protos) -> dict:
    """The nodes of the same pool from `start` on (what its gathered bins flow through), by name."""
    region, todo = {}, [start]
    while todo:
        node = todo.pop()
        found = _attribution(protos[node.name]) if node.name not in region and node.name in protos else None
        if found is None or found[1] != key:
            continue
        region[node.name] = node
        todo.extend(consumer for tensor in node.outputs for consumer in tensor.outputs)
    return region


def _scalar_index(ctx: RuleContext, node) -> int | None:
    """The index of a Gather of one constant index: `vals[..., i, :, j]` of the sum torch.export unrolled over a
    bin."""
    index = ctx.constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    return int(index) if index is not None and index.ndim == 0 else None
