"""GF000 runtime-failure."""

from __future__ import annotations

from graphfix.core.rule import Rule, Severity


class RuntimeFailure(Rule):
    """A node fails in onnxruntime at some input size, for a cause no other rule explains.

    ## What it does
    Reported by the runtime probe (`graphfix diagnose` without `--static`, `graphfix check`): the model is run
    with onnxruntime at the export size and at other sizes, and every node that fails is reported with its input
    shapes. Failures with a known cause are reported under that cause's rule (GF001-GF004, GF006, GF007); this
    code carries the others. It has no static detection.

    ## Why it breaks deployment
    A model that fails at some input size fails in production the first time that size arrives; onnxruntime
    stops at the first failing node, so one error can hide others downstream. The probe cuts the graph at each
    failing node and goes on, so all of them are listed.

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
