"""`stream`: run a streaming model N steps, feeding each cache output back into its cache input.

    report = stream(load_model("encoder.onnx"), {"r_att_cache": "att_cache", "r_cnn_cache": "cnn_cache"},
                    StreamOptions(steps=8, shapes={"chunk": (1, 16, 80)}))

Wenet-style streaming encoders return their attention and convolution caches as outputs that the caller passes
back with the next chunk. Exports break that loop in recurring ways: the exporter prunes a cache input the trace
did not read (wenet #1197), an output stops depending on its cache (the cache was baked), or the cache is
concatenated every step and never trimmed, so memory and latency grow with the stream. This checks, before any
run, that each pair exists with one dtype and rank, that every cache input is read, and that each cache output
depends on its cache input and on a chunk (non-cache) input; then it runs `steps` steps and checks after each
that every cache output has the dtype and shape of the cache it replaces, with finite values. Caches start as
zeros at the given shapes; chunks are new random values each step. Per-step latency (best of `repeats` runs,
after one warm-up run that is reported, not counted) and cache size are reported with their trend.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from graphfix.analysis.shapes import value_info_shape
from graphfix.core.errors import UsageError
from graphfix.io.budgets import BudgetedRuns
from graphfix.io.loading import LoadedModel
from graphfix.validate import ValidationOptions, probe_sizes, synthesize_inputs
from graphfix.validate.inputs import check_shapes, graph_inputs
from graphfix.validate.runner import error_text, first_line
from graphfix.validate.sessions import user_session


@dataclass
class StreamOptions:
    steps: int = 8
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)  # initial cache / chunk shapes
    repeats: int = 3  # timed runs per step; the fastest counts
    latency_tolerance: float = 2.0  # last third's median / first third's median above this is drift
    latency_floor_ms: float = 0.5  # ...when it also grew by more than this (timer noise on tiny models)
    threads: int | None = None


@dataclass
class StreamReport:
    path: str
    pairs: list[tuple[str, str]]
    problems: list[str] = field(default_factory=list)  # one line each: the pair (or input) and the step
    steps_run: int = 0
    latency_ms: list[float] = field(default_factory=list)
    warmup_ms: float | None = None
    cache_bytes: list[int] = field(default_factory=list)  # the caches fed at step 1, then returned by each step
    cache_shapes: dict[str, list[list[int]]] = field(default_factory=dict)  # input -> shape fed at each step
    trend: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "passed": self.passed,
                "pairs": [{"output": o, "input": i} for o, i in self.pairs], "steps_run": self.steps_run,
                "problems": self.problems, "warmup_ms": self.warmup_ms, "latency_ms": self.latency_ms,
                "cache_bytes": self.cache_bytes, "cache_shapes": self.cache_shapes, "trend": self.trend}


def stream(loaded: LoadedModel, feedback: dict[str, str], options: StreamOptions | None = None) -> StreamReport:
    """Check the cache pairs `feedback` (output -> input) statically, then over `options.steps` steps."""
    options = options or StreamOptions()
    if options.steps < 1:
        raise UsageError("--steps must be at least 1")
    model = loaded.proto
    check_shapes(model, options.shapes)
    report = StreamReport(loaded.name, list(feedback.items()))
    report.problems = static_problems(model, feedback)
    session = _session(loaded, options.threads)
    feeds = _initial_feeds(model, feedback, options)
    report.cache_shapes = {i: [] for i in feedback.values()}
    start = time.perf_counter()
    first = _run(session, feeds)
    report.warmup_ms = (time.perf_counter() - start) * 1e3
    if isinstance(first, str):
        report.problems.append(f"step 1: the model fails on the initial feeds: {first}")
        return report
    names = [o.name for o in session.get_outputs()]
    report.cache_bytes.append(int(sum(feeds[cache].nbytes for cache in feedback.values())))
    reported: set[str] = set()
    for step in range(1, options.steps + 1):
        _new_chunks(model, feeds, feedback, step)
        for cache in feedback.values():
            report.cache_shapes[cache].append(list(feeds[cache].shape))
        outputs, elapsed = _timed(session, feeds, options.repeats)
        if isinstance(outputs, str):
            report.problems.append(f"step {step}: the model fails: {outputs}")
            break
        values = dict(zip(names, outputs, strict=True))
        report.steps_run, report.latency_ms = step, [*report.latency_ms, elapsed]
        report.cache_bytes.append(int(sum(values[o].nbytes for o in feedback)))
        for problem in _step_problems(feedback, feeds, values, step):
            pair = problem.split(":", 1)[0]
            if pair not in reported:  # the first step a pair drifts; the trend line sums up the rest
                report.problems.append(problem)
                reported.add(pair)
        for out, cache in feedback.items():
            feeds[cache] = values[out]
    report.trend = trend(report, options)
    report.problems += report.trend.pop("problems")
    return report


def static_problems(model: onnx.ModelProto, feedback: dict[str, str]) -> list[str]:
    """Pairs that cannot loop: missing names are usage errors; unread caches and missing dependencies are problems."""
    inputs = {vi.name: vi for vi in graph_inputs(model)}
    outputs = {vi.name: vi for vi in model.graph.output}
    for out, cache in feedback.items():
        if out not in outputs:
            raise UsageError(f"--feedback {out}={cache}: '{out}' is no graph output ({', '.join(outputs)})")
        if cache not in inputs:
            raise UsageError(f"--feedback {out}={cache}: '{cache}' is no graph input ({', '.join(inputs)})")
    if len(set(feedback.values())) != len(feedback):
        raise UsageError("--feedback: two outputs feed the same input")
    chunks = [name for name in inputs if name not in feedback.values()]
    read = {name for node in model.graph.node for name in _reads(node)}
    problems = []
    for out, cache in feedback.items():
        pair = f"pair {out}={cache}"
        a, b = outputs[out].type.tensor_type, inputs[cache].type.tensor_type
        if a.elem_type != b.elem_type:
            problems.append(f"{pair}: dtype {_dtype(a.elem_type)} fed into {_dtype(b.elem_type)}")
        shape_a, shape_b = value_info_shape(outputs[out]), value_info_shape(inputs[cache])
        if shape_a is not None and shape_b is not None and len(shape_a) != len(shape_b):
            problems.append(f"{pair}: rank {len(shape_a)} fed into rank {len(shape_b)}")
        if cache not in read:
            problems.append(f"{pair}: cache input '{cache}' is never read (the export dropped the cache)")
            continue
        upstream = _graph_inputs_upstream(model, out)
        if cache not in upstream:
            problems.append(f"{pair}: '{out}' does not depend on '{cache}' (the cache is not carried over)")
        if chunks and not upstream & set(chunks):
            problems.append(f"{pair}: '{out}' depends on no chunk input ({', '.join(chunks)})")
    return problems


def _reads(node: onnx.NodeProto) -> list[str]:
    names = list(node.input)
    for attr in node.attribute:
        for graph in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            for inner in graph.node:
                names.extend(_reads(inner))
    return names


def _graph_inputs_upstream(model: onnx.ModelProto, output: str) -> set[str]:
    producers = {o: n for n in model.graph.node for o in n.output if o}
    seen, stack = set(), [output]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in producers:
            stack.extend(n for n in _reads(producers[name]) if n)
    return seen


def _dtype(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type).lower()


def _session(loaded: LoadedModel, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    if threads:
        options.intra_op_num_threads = threads
    return user_session(loaded, options, ["CPUExecutionProvider"])


def _initial_feeds(model, feedback, options: StreamOptions) -> dict[str, np.ndarray]:
    vopts = ValidationOptions(shapes=dict(options.shapes))
    feeds = synthesize_inputs(model, probe_sizes(model, vopts)[0], vopts)
    for cache in feedback.values():
        feeds[cache] = np.zeros_like(feeds[cache])
    return feeds


def _new_chunks(model, feeds, feedback, step: int) -> None:
    """Fresh values for the float chunk inputs (other inputs, such as offsets or masks, stay as synthesized)."""
    rng = np.random.default_rng(step)
    for vi in graph_inputs(model):
        value = feeds[vi.name]
        if vi.name not in feedback.values() and np.issubdtype(value.dtype, np.floating):
            feeds[vi.name] = rng.random(value.shape).astype(value.dtype)


@functools.lru_cache(maxsize=4)
def budgeted(session: ort.InferenceSession) -> BudgetedRuns:
    """The session's runs under the run budget: one watcher for every step of it."""
    return BudgetedRuns(session)


def _run(session: ort.InferenceSession, feeds) -> list[np.ndarray] | str:
    try:
        return budgeted(session).run(feeds)
    except Exception as exc:
        from graphfix.surgery.bench import short_error

        return short_error(first_line(error_text(exc)))


def _timed(session, feeds, repeats: int) -> tuple[list[np.ndarray] | str, float]:
    best, outputs = float("inf"), None
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        outputs = _run(session, feeds)
        best = min(best, (time.perf_counter() - start) * 1e3)
        if isinstance(outputs, str):
            break
    return outputs, best


def _step_problems(feedback, feeds, values, step: int) -> list[str]:
    problems = []
    for out, cache in feedback.items():
        fed, got = feeds[cache], values[out]
        pair = f"pair {out}={cache}"
        if got.dtype != fed.dtype:
            problems.append(f"{pair}: step {step}: dtype {got.dtype} returned for {fed.dtype} fed")
        elif got.shape != fed.shape:
            problems.append(f"{pair}: step {step}: shape {list(got.shape)} returned for {list(fed.shape)} fed "
                            f"(the cache {'grows' if got.size > fed.size else 'changes'})")
        if np.issubdtype(got.dtype, np.floating) and not np.isfinite(got).all():
            problems.append(f"{pair}: step {step}: the cache has NaN or Inf values")
    return problems


def trend(report: StreamReport, options: StreamOptions) -> dict[str, Any]:
    """Cache size and latency from the first to the last steps; drift is a problem line."""
    problems: list[str] = []
    sizes, times = report.cache_bytes, report.latency_ms
    out: dict[str, Any] = {"problems": problems}
    if sizes:
        out["cache_bytes"] = {"first": sizes[0], "last": sizes[-1], "max": max(sizes),
                              "per_step": (sizes[-1] - sizes[0]) / max(len(sizes) - 1, 1),
                              "flat": len(set(sizes)) == 1}
        if not out["cache_bytes"]["flat"]:
            problems.append(f"cache size drifts: {sizes[0]} bytes fed at step 1, {sizes[-1]} returned by step "
                            f"{len(sizes) - 1} ({out['cache_bytes']['per_step']:+.0f} bytes per step)")
    if len(times) >= 3:
        third = max(len(times) // 3, 1)
        head, tail = statistics.median(times[:third]), statistics.median(times[-third:])
        ratio = tail / head if head > 0 else 1.0
        flat = ratio <= options.latency_tolerance or tail - head <= options.latency_floor_ms
        out["latency_ms"] = {"first": round(head, 4), "last": round(tail, 4), "ratio": round(ratio, 3),
                             "flat": flat}
        if not flat:
            problems.append(f"latency drifts: {head:.3f} ms per step at first, {tail:.3f} ms at the end "
                            f"(x{ratio:.2f})")
    return out
