"""GF000 runtime-failure."""

from __future__ import annotations

from graphfix.core.rule import Rule, Severity


class RuntimeFailure(Rule):
    """A node fails in onnxruntime at some input size, for a cause no other rule explains, or the model returns an
    output its declaration contradicts.

    ## What it does
    Reported by the runtime probe (`graphfix diagnose` without `--static`, `graphfix check`): the model is run
    with onnxruntime at the export size and at other sizes, and every node that fails is reported with its input
    shapes. Failures with a known cause are reported under that cause's rule (GF001-GF004, GF006, GF007); this
    code carries the others. A Conv, Pool or Pad that fails only below the export size is the model's minimum
    size (PyTorch fails there too), not a finding; so is a node that reads a tensor of no elements there, where
    a Conv or Pool above it read an input shorter than its window (onnxruntime's AveragePool returns a frame
    where PyTorch's fails: transformers' SEW exported by dynamo); any other node that fails there is (the reader
    of a crop that a size baked with `int(T)` emptied). So is an output whose
    shape a clean run contradicts with the model's own declaration (a dim named like an input's, a fixed dim, the
    rank), which `graphfix repair` refuses unchanged: a size baked while tracing, or an output dim given the name
    of a size it is not (the export size given with `--trace-shape` tells the two apart: a declaration the model
    contradicts there is wrong, not the model). The dynamo exporter declares an `nn.GRU`'s output `[B, 12, 16]` at
    the export length, though the GRU op makes it `T`: an error on a model onnxruntime runs at every length, left so
    because dynamo writes the same graph and declaration for `gru(x)[0][:, :12]` traced at 12 (it drops the crop),
    where the 12 is PyTorch's truth (`tests/test_dynamo_exports.py`). A rank the graph never gives is no
    declaration held against it: torch.export declares `x.squeeze(-1)` of a length it cannot prove is 1 with that
    axis, which the ONNX Squeeze removes wherever it runs (onnx's inference of the graph says the rank). A dim
    torch.export declares `2*H2` is probed at even sizes only, `2*h + 1` at odd ones (the exporter checked the
    model there); a length a Reshape splits into whole chunks is not kept to multiples, since a head split with the
    length baked, a pad to a multiple that the trace dropped with its branch and `nn.PixelUnshuffle(2)` leave such
    graphs alike (red team 79): GF004's finding
    says to give multiples with --shape where the model takes no others (`tests/frontends/test_chunked_lengths.py`).
    Sizes where the graph's own shapes agree only at a step are probed too (torchvision's RAFT meets `H // 8` with
    what its strided Convs make of H, equal at multiples of 8 only; timm's MaxViT adds a stride-2 Conv to an AvgPool
    shortcut, equal at 2 sizes in every 4; timm's HRNet adds branches upsampled by a Resize of scale 2 to finer
    ones, 4 sizes in every 32, the size analysis reading `floor(d * scale)`; a pad to a multiple that the trace
    dropped leaves the same graph): a failure at the node where they meet is this rule's, not a baked repeat
    count's, shape's or a mask's, and the hint of every failure at such a size names the sizes and the `--shape`
    to give, at multiples of the step (graphfix.validate.steps, `tests/frontends/test_raft.py`).
    The probe also loads the model once as a default session does (graph optimizations on; its large weights left
    out, graph inputs of their type and dims): a model onnxruntime runs only with its optimizations off is an error
    (timm's EVA with rotary positions exported with TorchScript: "Can't merge shape info" at a Concat,
    `tests/validate/test_deployed_load.py`). It has no static detection.

    ## Why it breaks deployment
    A model that fails at some input size fails in production the first time that size arrives; onnxruntime
    stops at the first failing node, so one error can hide others downstream. The probe cuts the graph at each
    failing node and goes on, so all of them are listed; one that reads values fabricated at such a cut is a
    warning (it may be the earlier failure's consequence).

    ## Example
    `Non-zero status code returned while running Gather node. Name:'/Gather_3' ... indices element out of data
    bounds` at batch 3 only: an index computed from a size baked at export time.

    ## Fix safety
    Not fixable automatically: the cause is unknown. Read onnxruntime's message with the shapes shown, and try
    `graphfix explain "<message>"`.
    """

    code = "GF000"
    name = "runtime-failure"
    severity = Severity.ERROR
    runtime_only = True
    runtime_hint = "Read onnxruntime's message; the node's inputs have the shapes shown."
