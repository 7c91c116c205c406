"""GF001 truncated-graph."""

from __future__ import annotations

from collections.abc import Iterator

import onnx_graphsurgeon as gs

from graphfix.analysis.context import RuleContext
from graphfix.analysis.walk import consumers_map, input_dependent_tensors, live_nodes, tensor_names
from graphfix.core.rule import Finding, Fix, Rejection, Rule, Safety, Severity, known


class TruncatedGraph(Rule):
    """Graph outputs cut off from the inputs, unused inputs, dead nodes and missing outputs.

    ## What it does
    Checks that every graph output is produced by a node and depends on at least one graph input; that every
    graph input is read; that every node contributes to an output; that no initializer is left unused; and,
    with `--expect-outputs a,b`, that the outputs a deployment needs are there. External-data files shorter
    than their tensors declare are refused when the model is loaded (exit 2), naming the tensor.

    ## Why it breaks deployment
    The TorchScript exporter records values, not code. An output computed from a size through Python
    (`torch.tensor(float(x.shape[1]))`), or a model whose inputs were captured as constants (detectron2 PR #4237,
    pytorch #21774 "same output for every input"), exports as a graph whose output ignores its input: it runs,
    and returns the export-time answer forever. The exporter also prunes inputs the trace did not read, so
    callers that feed them fail with `INVALID_ARGUMENT : Invalid Feed Input Name:cnn_cache` (wenet #1197,
    pytorch #62951); an input that is present but unread usually means a streaming cache that is never used.

    ## Example
    ```python
    def forward(self, x):
        return self.net(x), torch.tensor(float(x.shape[1]))   # 2nd output is a constant in the ONNX graph
    ```
    Keep sizes as tensors (`x.shape[1]` under tracing is a 0-d tensor; return `torch._shape_as_tensor(x)[1]`).

    ## Fix safety
    Removing dead nodes and unused initializers is safe: no output can change. Removing an unused graph input
    changes the model's interface, so it is unsafe (`--unsafe-fixes`). Outputs without a producer or without
    a dependency on any input are not fixable: the computation is missing from the graph; re-export it.
    """

    code = "GF001"
    claims_undeclared_inputs = True  # an input the caller gives that the export pruned
    name = "truncated-graph"
    severity = Severity.ERROR
    fixable = True
    runtime_messages = (r"Invalid (?:Feed )?Input Name", r"missing from input feed")
    runtime_order = 10
    runtime_hint = ("The caller feeds an input the graph does not declare: the exporter pruned it. Re-export keeping "
                    "the input used, or stop feeding it.")
    traced_values = True
    knowledge = (
        known(r"out of bounds or can not be read in full|size to read: \d+ given file_length",
              "onnxruntime: the external-data file is shorter than its tensors declare",
              "The weights file was truncated (interrupted copy or download) or belongs to another export.",
              "Copy the `.onnx.data` file again; `graphfix diagnose` names the tensor that does not fit.",
              reports="onnxruntime #11848"),
        known(r"doesn't exist or is not accessible",
              "onnx/onnxruntime: the external-data file is missing",
              "The `.onnx` references weights in a file that is not beside it.",
              "Copy the data file next to the model (same relative location as recorded in the model).",
              reports="onnx #3157"),
        known(r"Invalid Feed Input Name:?\s*\S+",
              "onnxruntime: an input you feed does not exist in the graph",
              "The exporter pruned an input that the traced forward() did not read (e.g. a streaming cache).",
              "Read every input in forward() (or keep_initializers_as_inputs for constants); check with "
              "`graphfix diagnose --expect-outputs` and the GF001 unused-input findings.",
              reports="wenet #1197, pytorch #62951"),
    )

    def detect(self, ctx: RuleContext) -> Iterator[Finding | Rejection]:
        graph = ctx.graph
        yield from self._missing_outputs(ctx)
        yield from self._outputs_without_inputs(graph)
        yield from self._unused_inputs(graph)
        yield from self._dead_nodes(graph)
        yield from self._unused_initializers(ctx)

    def _missing_outputs(self, ctx: RuleContext) -> Iterator[Finding]:
        missing = [name for name in ctx.options.expect_outputs if name not in ctx.graph_output_names]
        if missing:
            yield self.finding(
                f"expected output(s) {', '.join(repr(n) for n in missing)} are not graph outputs "
                f"(the graph has: {', '.join(sorted(ctx.graph_output_names)) or 'none'})",
                tensors=missing,
                hint="Export them: add them to the module's return value and to `output_names` of torch.onnx.export.",
            )

    def _outputs_without_inputs(self, graph: gs.Graph) -> Iterator[Finding | Rejection]:
        dependent = input_dependent_tensors(graph)
        inputs = {id(t) for t in graph.inputs}
        for out in graph.outputs:
            if id(out) in inputs:
                continue  # an input passed straight through depends on itself
            if isinstance(out, gs.Constant) or (not out.inputs and out.name):
                reason = "is a constant" if isinstance(out, gs.Constant) else "has no producer"
                yield self.finding(
                    f"output '{out.name}' {reason}: the graph does not compute it",
                    tensors=[out],
                    hint="Re-export; make sure the module computes this output from its inputs with tensor ops.",
                )
            elif id(out) not in dependent:
                yield self.finding(
                    f"output '{out.name}' does not depend on any graph input: it is a value captured at export "
                    "time and will be the same for every input",
                    nodes=out.inputs,
                    tensors=[out],
                    hint="A size or value went through Python (int(), float(), .item(), .tolist(), torch.tensor(...)) "
                    "or an input was exported as a constant; compute it with tensor ops from the input, e.g. "
                    "torch.tensor(float(x.shape[1])) -> torch._shape_as_tensor(x)[1].float().",
                )

    def _unused_inputs(self, graph: gs.Graph) -> Iterator[Finding]:
        readers = consumers_map(graph)
        outputs = {id(t) for t in graph.outputs}
        for tensor in graph.inputs:
            if id(tensor) in readers or id(tensor) in outputs:
                continue
            yield self.finding(
                f"graph input '{tensor.name}' is not used by any node",
                severity=Severity.WARNING,
                tensors=[tensor],
                hint="If it is a streaming cache or mask, the module never reads it during tracing (the exporter "
                "then keeps or prunes it by accident); read it in forward() or drop it from input_names.",
                fix=Fix(f"remove unused graph input '{tensor.name}'", apply=_remove_input(tensor.name),
                        safety=Safety.UNSAFE, reason="changes the model's interface: callers feeding it will fail"),
            )

    def _dead_nodes(self, graph: gs.Graph) -> Iterator[Finding]:
        live = live_nodes(graph)
        dead = [node for node in graph.nodes if id(node) not in live]
        if not dead:
            return
        names = [n.name for n in dead]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        yield self.finding(
            f"{len(dead)} node(s) contribute to no graph output: {shown}",
            severity=Severity.WARNING,
            nodes=dead,
            hint="Often the remains of a pruned output; check that every output you need is exported.",
            fix=Fix(f"remove {len(dead)} dead node(s)", apply=_remove_nodes(set(names)), safety=Safety.SAFE,
                    reason="no graph output reads them"),
        )

    def _unused_initializers(self, ctx: RuleContext) -> Iterator[Finding]:
        used = tensor_names(ctx.graph)
        unused = [init.name for init in ctx.model.graph.initializer if init.name not in used]
        if not unused:
            return
        shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
        yield self.finding(
            f"{len(unused)} initializer(s) are never read: {shown}",
            severity=Severity.INFO,
            tensors=unused,
            # onnx-graphsurgeon keeps only tensors that nodes or graph outputs use, so exporting drops these.
            fix=Fix(f"drop {len(unused)} unused initializer(s)", apply=lambda graph: None, safety=Safety.SAFE,
                    reason="no node reads them"),
        )


def _remove_input(name: str):
    def apply(graph: gs.Graph) -> None:
        graph.inputs = [t for t in graph.inputs if t.name != name]

    return apply


def _remove_nodes(names: set[str]):
    def apply(graph: gs.Graph) -> None:
        for node in graph.nodes:
            if node.name in names:
                node.outputs.clear()  # the engine's clean-up then drops the node and what only it read

    return apply
