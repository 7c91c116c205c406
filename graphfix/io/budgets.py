"""Resource budgets checked before any analysis: a few-KB file must not cost hours or terabytes.

- Nodes: the model's node count once its model-local functions are expanded (as onnxruntime and shape
  inference expand them) and subgraphs counted, at most GRAPHFIX_MAX_NODES (default 200,000; real exports of
  large transformers stay well below). A graph whose own nodes are over it is not analysed (its load checks
  alone would run for minutes): the command says so and exits 1. A graph within it whose functions expand past
  it (a few KB that double twenty times) is loaded and checked; `diagnose` and `check` then run the static rules
  on the graph with its function calls unexpanded and skip the probe, saying so (exit 1); the commands that must
  run the model to prove what they write (repair, extract, freeze) refuse it (exit 1). onnx's shape inference
  inlines every call, so it gets such a graph without its functions (`expands_past_budget`, counted in time
  linear in the file, never by expanding).
- Runs: one onnxruntime run stops after GRAPHFIX_MAX_RUN_SECONDS (default 10) and reports it did.
- Data propagation: see graphfix.io.propagation.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterable, Iterator

import onnx
from onnx import AttributeProto

from graphfix.core import values
from graphfix.core.errors import GraphfixError, UsageError

ENV_MAX_NODES = "GRAPHFIX_MAX_NODES"
DEFAULT_MAX_NODES = 200_000


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


ENV_MAX_MEMORY = "GRAPHFIX_MAX_MEMORY"
MEMORY_SHARE = 0.75  # of the memory available when a worker starts: what its own allocations may add


def bound_data(extra: int) -> None:
    """Hold this process's data (heap and anonymous mappings, RLIMIT_DATA; a file mapped read-only is not data) to
    what it holds now plus `extra` bytes: past it an allocation fails (numpy's MemoryError, onnxruntime's "failed
    to allocate"), where the machine would otherwise kill a process of its choosing. Without /proc, or under a
    lower hard limit, the system's own bound holds."""
    try:
        with open("/proc/self/status") as status:
            held = next(int(line.split()[1]) << 10 for line in status if line.startswith("VmData:"))
        hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
        limit = held + extra if hard == resource.RLIM_INFINITY else min(held + extra, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (OSError, ValueError, StopIteration):
        return


MIN_WORKER_MEMORY = 128 << 20  # below it a worker cannot start what it runs (helper 106: 90M did not)


def max_worker_memory() -> int | None:
    """GRAPHFIX_MAX_MEMORY in bytes, or None where unset; a value that is no size, or one too small for a worker
    to start with, is a UsageError (read before any work: in the worker it was an internal error, helper 104)."""
    given = values.from_env(ENV_MAX_MEMORY, values.byte_size, None)
    if given is not None and given < MIN_WORKER_MEMORY:
        raise UsageError(f"{ENV_MAX_MEMORY}: expected at least {MIN_WORKER_MEMORY >> 20}M, the least a "
                                f"worker starts with, got {os.environ[ENV_MAX_MEMORY].strip()!r}")
    return given


def bound_worker_memory() -> None:
    """A forked worker's bound (`bound_data`): GRAPHFIX_MAX_MEMORY bytes, or three quarters of the memory available
    as it starts. The probe's budget sizes its runs from inferred shapes; a tensor whose size inference does not
    see (a ConstantOfShape of computed constants, beside a node that turns data propagation off) is held here."""
    given = max_worker_memory()
    bound_data(given if given is not None else int(available_memory() * MEMORY_SHARE))


def available_memory() -> int:
    """Bytes of memory available now (it moves with every other process): the kernel's estimate, which counts the
    page cache it would drop (a model just read fills it), else the free pages."""
    try:
        with open("/proc/meminfo") as info:
            return next(int(line.split()[1]) << 10 for line in info if line.startswith("MemAvailable:"))
    except (OSError, ValueError, StopIteration):
        pass
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
    if not expands_past_budget(proto):
        return ""
    return (f"more than {limit:,} nodes once its model-local functions are expanded, over the node budget "
            f"({ENV_MAX_NODES})")


def expands_past_budget(proto: onnx.ModelProto) -> bool:
    """Whether inlining the model's functions, as onnx's shape inference does, would make more nodes than the
    budget: a few KB of functions that each call the next twice make 2**30 (counted here, never expanded)."""
    return bool(proto.functions) and expanded_node_count(proto, max_nodes()) > max_nodes()


FunctionKey = tuple[str, str, str]  # domain, name, overload: what a call names


def expanded_node_count(proto: onnx.ModelProto, limit: int, expand: bool = True) -> int:
    """Nodes after inlining model-local functions (`expand`), else with each call counted as one node;
    counting stops a little past `limit`."""
    functions = {(f.domain, f.name, f.overload): f for f in proto.functions} if expand else {}
    return _count(proto.graph.node, _function_sizes(functions, limit), limit)


def _count(nodes: Iterable[onnx.NodeProto], sizes: dict[FunctionKey, int], limit: int) -> int:
    """Nodes, a call counted as its function's size in `sizes` (else as one), subgraphs' nodes added."""
    total = 0
    for node in nodes:
        total += sizes.get((node.domain, node.op_type, node.overload), 1)
        for sub in subgraphs(node):
            total += _count(sub.node, sizes, limit)
        if total > limit:
            return total
    return total


def _function_sizes(functions: dict[FunctionKey, onnx.FunctionProto], limit: int) -> dict[FunctionKey, int]:
    """Each function's node count once inlined, callees first, each once: linear in the model however often they
    call each other. Depth first without recursion (a chain of 10,000 functions is a few hundred KB); a call back
    into a function still being counted (a cycle, which onnx's checker refuses) counts as one node."""
    sizes: dict[FunctionKey, int] = {}
    for root in functions:
        if root in sizes:
            continue
        path, stack = {root}, [(root, _calls(functions[root].node))]
        while stack:
            key, callees = stack[-1]
            callee = next((c for c in callees if c in functions and c not in sizes and c not in path), None)
            if callee is not None:
                path.add(callee)
                stack.append((callee, _calls(functions[callee].node)))
                continue
            if key not in sizes:
                sizes[key] = _count(functions[key].node, sizes, limit)
            path.discard(key)
            stack.pop()
    return sizes


def _calls(nodes: Iterable[onnx.NodeProto]) -> Iterator[FunctionKey]:
    """What each node names as its operator, subgraphs' nodes included."""
    for node in nodes:
        yield node.domain, node.op_type, node.overload
        for sub in subgraphs(node):
            yield from _calls(sub.node)


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs a node's attributes hold (an If's branches, a Loop's body)."""
    for attr in node.attribute:
        yield from [attr.g] if attr.type == AttributeProto.GRAPH else attr.graphs


class BudgetedRuns:
    """`session.run`, stopped past the run budget (`GRAPHFIX_MAX_RUN_SECONDS`), the error then saying so: for the
    commands that run a model at the user's sizes (`bench`, `stream`), where a Loop of 10^15 steps ran on, and on
    in the worker a killed graphfix left (helper 104). One watcher thread for every run, not a timer each: a
    thread started per run took a tenth of a 0.3 ms step that `stream` and `bench` measure."""

    def __init__(self, session):
        import onnxruntime as ort  # the commands that run models have it loaded already

        self.session, self.options, self.budget = session, ort.RunOptions(), run_budget_seconds()
        self._deadline: float | None = None
        self._changed = threading.Condition()
        threading.Thread(target=self._watch, name="graphfix-run-budget", daemon=True).start()

    def run(self, feeds: dict) -> list:
        with self._changed:
            self._deadline = time.monotonic() + self.budget
            self._changed.notify()
        try:
            return self.session.run(None, feeds, self.options)
        except Exception:
            if self.options.terminate:
                raise RuntimeError(f"stopped after {self.budget:g} s (run budget, {ENV_RUN_BUDGET})") from None
            raise
        finally:
            with self._changed:
                self._deadline = None
                self._changed.notify()

    def _watch(self) -> None:
        with self._changed:
            while not self.options.terminate:
                if self._deadline is None:
                    self._changed.wait()
                elif (left := self._deadline - time.monotonic()) > 0:
                    self._changed.wait(left)
                else:
                    self.options.terminate = True
