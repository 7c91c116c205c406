"""What the probe may run: inputs it can make, within a memory budget.

The probe fabricates every graph input. It cannot for sequences, maps and optionals, and it must not try when
the inputs alone would take more memory than the budget (a huge input dim, a batch of 10¹²): such a model is
reported as not run, with the reason, instead of failing with MemoryError half-way.

The budget is a quarter of the memory available when graphfix starts, or GRAPHFIX_MAX_PROBE_MEMORY bytes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import onnx

from graphfix.core.counts import spelled
from graphfix.core.errors import GraphfixError
from graphfix.io.budgets import ENV_PROBE_MEMORY as ENV_BUDGET
from graphfix.io.budgets import ENV_RUN_BUDGET, probe_memory_budget, run_budget_seconds
from graphfix.io.propagation import MAX_PROPAGATED_ELEMENTS, data_prop_allowed


class NotProbed(GraphfixError):
    """The model cannot be run by the probe; says why (exit 1: the model is not proven)."""

    exit_code = 1


T = TypeVar("T")


def made_within_budget(make: Callable[[], T], what: str) -> T:
    """`make()` (an onnxruntime session loaded with its optimizations, which fold constants while loading)
    waited for no longer than the run budget, on a thread of its own; past it NotProbed, and the thread is left
    to end with the process (onnxruntime cannot be stopped while it loads, and lets go of the interpreter while it
    does): 1200 MatMuls of 2048² constants took 273 s to load, past any run budget (helper 104)."""
    made: dict[str, T | BaseException] = {}

    def load() -> None:
        try:
            made["value"] = make()
        except BaseException as exc:  # handed to the caller, on its thread
            made["error"] = exc

    thread = threading.Thread(target=load, name="graphfix-bounded-load", daemon=True)
    thread.start()
    thread.join(budget := run_budget_seconds())
    if thread.is_alive():
        raise NotProbed(f"{what} did not load within {budget:g} s (run budget, {ENV_RUN_BUDGET})")
    if "error" in made:
        raise made["error"]
    return made["value"]


def check_input_kind(value: onnx.ValueInfoProto) -> None:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        words = {"sequence_type": "a sequence", "map_type": "a map", "optional_type": "an optional",
                 "sparse_tensor_type": "a sparse tensor"}.get(kind or "", "of no known type")
        raise NotProbed(f"input '{value.name}' is {words}: graphfix cannot make values for it, so the model was "
                        "not run (give --input values or check it with static analysis)")


def check_input_bytes(shapes: dict[str, tuple[int, ...]], dtypes: dict[str, np.dtype]) -> None:
    """Refuse to allocate inputs whose total size is over the budget."""
    budget = probe_memory_budget()
    total = sum(math.prod(shape) * np.dtype(dtypes[name]).itemsize for name, shape in shapes.items())
    if total > budget:
        sizes = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
        raise NotProbed(f"the inputs ({sizes}) would take {spelled(total)} bytes, over the probe's memory budget of "
                        f"{budget:,} ({ENV_BUDGET}); the model was not run at these sizes")


def loadable(proto: onnx.ModelProto) -> None:
    """NotProbed where onnx's data propagation, which onnxruntime runs as it loads the graph, would hold more
    than the budget's shape values (helper 55: `Shape` of 1,000 dims, concatenated 1,000 times twice, took 8 GB
    and 15 s before any run)."""
    if not data_prop_allowed(proto, sized=False):
        raise NotProbed(f"a node would hold more than {MAX_PROPAGATED_ELEMENTS:,} shape values while onnxruntime "
                        "loads the model (graphfix.io.budgets): it was not run (its static analysis stands)")
