"""Resource budgets checked before any analysis: a few-KB file must not cost hours or terabytes.

- Nodes: the model's node count once its model-local functions are expanded (as onnxruntime and shape
  inference expand them) and subgraphs counted, at most GRAPHFIX_MAX_NODES (default 200,000; real exports of
  large transformers stay well below). A graph whose own nodes are over it is not analysed (its load checks
  alone would run for minutes): the command says so and exits 1. A graph within it whose functions expand past
  it (a few KB that double twenty times) is loaded and checked; `diagnose` and `check` then run the static rules
  on the graph with its function calls unexpanded and skip the probe, saying so (exit 1); the commands that must
  run the model to prove what they write (repair, extract, freeze) refuse it (exit 1).
- Runs: one onnxruntime run stops after GRAPHFIX_MAX_RUN_SECONDS (default 10) and reports it did.
- Data propagation: onnx's shape inference with `data_prop=True` materialises the values of a `Range` with
  constant inputs (10¹² elements: terabytes); `data_prop_allowed` turns it off for such models.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import AttributeProto, numpy_helper

from graphfix.core import values
from graphfix.core.errors import GraphfixError

ENV_MAX_NODES = "GRAPHFIX_MAX_NODES"
DEFAULT_MAX_NODES = 200_000
MAX_PROPAGATED_ELEMENTS = 1 << 20  # a Range longer than this is no shape computation


class BudgetExceeded(GraphfixError):
    """The model is over a resource budget and was not analysed (exit 1: nothing was proven)."""

    exit_code = 1


ENV_PROBE_MEMORY = "GRAPHFIX_MAX_PROBE_MEMORY"
PROBE_MEMORY_SHARE = 4  # a quarter of what is available


def probe_memory_budget(available: int | None = None) -> int:
    """Bytes the probe's inputs may take: GRAPHFIX_MAX_PROBE_MEMORY, or a quarter of the memory `available`
    (`available_memory()` when not given) (here rather than in graphfix.validate, so that the command line checks it
    without importing the proof)."""
    given = values.from_env(ENV_PROBE_MEMORY, values.byte_size, None)
    if given is not None:
        return given
    return max((available or available_memory()) // PROBE_MEMORY_SHARE, 64 << 20)


def available_memory() -> int:
    """Bytes of memory available now (it moves with every other process)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30


ENV_RUN_BUDGET = "GRAPHFIX_MAX_RUN_SECONDS"
DEFAULT_RUN_SECONDS = 10.0  # one onnxruntime run of the probe or the validation; a Loop of 10¹² trips stops here


def run_budget_seconds() -> float:
    """GRAPHFIX_MAX_RUN_SECONDS, or the default; a value that is no time is a UsageError."""
    return values.from_env(ENV_RUN_BUDGET, values.seconds, DEFAULT_RUN_SECONDS)


def max_nodes() -> int:
    """GRAPHFIX_MAX_NODES, or the default; a value that is no count is a UsageError."""
    return values.from_env(ENV_MAX_NODES, values.count, DEFAULT_MAX_NODES)


def check_node_budget(proto: onnx.ModelProto, name: str) -> str:
    """Raise BudgetExceeded when the graph's own nodes are over the node budget; return a note (else '') when
    only the expansion of its functions is: such a model can be analysed without expanding them."""
    limit = max_nodes()
    if expanded_node_count(proto, limit, expand=False) > limit:
        raise BudgetExceeded(f"{name}: more than {limit:,} nodes, over the node budget ({ENV_MAX_NODES}): not "
                             "analysed")
    if expanded_node_count(proto, limit) <= limit:
        return ""
    return (f"more than {limit:,} nodes once its model-local functions are expanded, over the node budget "
            f"({ENV_MAX_NODES})")


def expanded_node_count(proto: onnx.ModelProto, limit: int, expand: bool = True) -> int:
    """Nodes after inlining model-local functions (`expand`), else with each call counted as one node;
    counting stops a little past `limit`."""
    functions = {(f.domain, f.name): f for f in proto.functions} if expand else {}
    sizes: dict[tuple[str, str], int] = {}

    def count(nodes: Iterable[onnx.NodeProto], stack: tuple) -> int:
        total = 0
        for node in nodes:
            key = (node.domain, node.op_type)
            if key in functions and key not in stack:
                if key not in sizes:
                    sizes[key] = count(functions[key].node, (*stack, key))
                total += sizes[key]
            else:
                total += 1
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == AttributeProto.GRAPH else attr.graphs:
                    total += count(sub.node, stack)
            if total > limit:
                return total
        return total

    return count(proto.graph.node, ())


def data_prop_allowed(model: onnx.ModelProto) -> bool:
    """False when a Range with constant inputs would make onnx's data propagation allocate without bound."""
    constants = {t.name: t for t in model.graph.initializer if len(t.dims) == 0}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == AttributeProto.TENSOR:
            constants[node.output[0]] = node.attribute[0].t
    for node in model.graph.node:
        if node.op_type != "Range" or not all(name in constants for name in node.input[:3]):
            continue
        if any(constants[n].data_location == onnx.TensorProto.EXTERNAL for n in node.input[:3]):
            return False  # its values are not read here (onnx's numpy_helper would look in the working directory)
        try:
            start, limit, delta = (float(np.asarray(numpy_helper.to_array(constants[n])).reshape(()))
                                   for n in node.input[:3])
        except (ValueError, TypeError):
            return False
        if delta == 0 or (limit - start) / delta > MAX_PROPAGATED_ELEMENTS:
            return False
    return True
