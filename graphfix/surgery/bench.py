"""`bench`: latency percentiles, throughput and real-time factor per model and batch size.

    rows = bench([load_model("model.onnx"), load_model("fixed.onnx")], BenchOptions(batches=[1, 4], audio_seconds=1))
    rows += bench_torch(module, load_model("model.onnx"), BenchOptions(batches=[1, 4], audio_seconds=1))

Every model runs on the same synthesized inputs (seeded; `--shape` fixes dims, `--batch` sets the leading
symbolic dim of every input). Sessions use onnxruntime's default graph optimizations, as a deployment does, with
`intra_op_num_threads` from `--threads`. Warm-up runs are timed and reported but excluded from the figures.
RTF is the median latency divided by the audio a run processes: batch x `--audio-seconds` (RTF < 1 is faster
than real time). `bench_torch` times a PyTorch module on the same inputs (positional, in graph-input order), for
the "onnxruntime vs PyTorch" comparison users make (FireRedASR: RTF 0.335 GPU / 1.375 CPU vs 0.2 for torch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from graphfix.core.errors import UsageError, printable, printable_path
from graphfix.io.budgets import BudgetedRuns
from graphfix.io.loading import LoadedModel
from graphfix.validate import ValidationOptions, probe_sizes, synthesize_inputs
from graphfix.validate.inputs import check_shapes, dim_names, graph_inputs
from graphfix.validate.runner import error_text, first_line
from graphfix.validate.sessions import user_session

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@dataclass
class BenchOptions:
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    batches: list[int] | None = None  # None: as --shape says, else 1
    warmup: int = 3
    runs: int = 20
    threads: int | None = None
    provider: str = "cpu"
    audio_seconds: float | None = None  # per batch item


@dataclass
class BenchRow:
    model: str
    batch: int | None
    shapes: dict[str, list[int]] = field(default_factory=dict)
    warmup_ms: list[float] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p90, max, mean
    throughput: float | None = None  # batch items per second
    rtf: float | None = None
    provider: str = ""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "batch": self.batch, "shapes": self.shapes, "provider": self.provider,
                "warmup": {"runs": len(self.warmup_ms), "ms": [round(t, 4) for t in self.warmup_ms],
                           "excluded": True},
                "latency_ms": self.latency_ms, "throughput_per_s": self.throughput, "rtf": self.rtf,
                "error": self.error}


def bench(models: list[LoadedModel], options: BenchOptions) -> list[BenchRow]:
    """One row per (batch, model), models side by side within a batch; failures are rows with `error`."""
    _check_options(options, models)
    sessions = [(m, make_session(m, options)) for m in models]
    rows = []
    for batch in options.batches or [None]:
        for loaded, session in sessions:
            rows.append(_bench_one(loaded, session, batch, options))
    return rows


def bench_torch(module, like: LoadedModel, options: BenchOptions, name: str | None = None) -> list[BenchRow]:
    """Time a PyTorch module (CPU, inference mode) on the inputs `like` would get, positional in input order."""
    import torch

    _check_options(options, [like])
    if options.threads:
        torch.set_num_threads(options.threads)
    module.eval()
    rows = []
    for batch in options.batches or [None]:
        row = BenchRow(name or f"torch:{type(module).__name__}", batch, provider="torch-cpu")
        try:
            feeds = feeds_for(like, batch, options)
        except UsageError as exc:
            row.error = str(exc)
            rows.append(row)
            continue
        args = [torch.from_numpy(np.ascontiguousarray(feeds[vi.name])) for vi in graph_inputs(like.proto)]

        def call(args=args):
            with torch.inference_mode():
                module(*args)

        rows.append(_measure(row, call, feeds, options))
    return rows


def _check_options(options: BenchOptions, models: list[LoadedModel]) -> None:
    held = {vi.name for loaded in models for vi in graph_inputs(loaded.proto)}
    for loaded in models:  # models side by side take the shapes of the inputs each has (an encoder no tokens')
        check_shapes(loaded.proto, options.shapes, optional=frozenset(options.shapes) & held)
    if options.runs < 1 or options.warmup < 0:
        raise UsageError("--runs must be at least 1 and --warmup at least 0")
    if any(b < 1 for b in options.batches or []):
        raise UsageError("--batch sizes must be at least 1")
    if options.audio_seconds is not None and options.audio_seconds <= 0:
        raise UsageError("--audio-seconds must be positive")
    if options.provider not in PROVIDERS:
        raise UsageError(f"--provider must be one of {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[options.provider]
    if wanted not in ort.get_available_providers():
        raise UsageError(f"--provider {options.provider}: {wanted} is not available in this onnxruntime "
                         f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu")


def make_session(loaded: LoadedModel, options: BenchOptions) -> ort.InferenceSession:
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 4  # failures are reported in their row
    if options.threads:
        session_options.intra_op_num_threads = options.threads
    wanted = PROVIDERS[options.provider]
    providers = [wanted] if wanted == "CPUExecutionProvider" else [wanted, "CPUExecutionProvider"]
    session = user_session(loaded, session_options, providers)
    if session.get_providers()[0] != wanted:
        raise UsageError(f"--provider {options.provider}: onnxruntime fell back to {session.get_providers()[0]}")
    return session


def feeds_for(loaded: LoadedModel, batch: int | None, options: BenchOptions) -> dict[str, np.ndarray]:
    """Inputs at the --shape dims, with every dim named like a leading symbolic dim set to `batch` (default: the
    --shape value, else 1)."""
    model = loaded.proto
    forced = ValidationOptions(shapes=dict(options.shapes))
    binding = dict(probe_sizes(model, forced)[0])
    inputs = graph_inputs(model)
    given_leading = {dim_names(vi)[0] for vi in inputs if dim_names(vi) and options.shapes.get(vi.name)
                     and options.shapes[vi.name][0] is not None}
    for vi in inputs:
        names = dim_names(vi)
        if not names:
            continue
        if isinstance(names[0], int):
            if batch is not None and names[0] != batch:
                raise UsageError(f"batch {batch}: input '{vi.name}' has a fixed leading dim {names[0]}")
        elif batch is not None or names[0] not in given_leading:
            binding[names[0]] = batch or 1
    shapes = {}
    for vi in inputs:
        given = options.shapes.get(vi.name, ())
        dims = [given[a] if a < len(given) and given[a] is not None else (n if isinstance(n, int) else binding[n])
                for a, n in enumerate(dim_names(vi))]
        if dims and batch is not None:
            dims[0] = batch
        shapes[vi.name] = tuple(dims)
    return synthesize_inputs(model, binding, ValidationOptions(shapes=shapes))


def _bench_one(loaded: LoadedModel, session: ort.InferenceSession, batch: int | None,
               options: BenchOptions) -> BenchRow:
    row = BenchRow(loaded.name, batch, provider=session.get_providers()[0])
    try:
        feeds = feeds_for(loaded, batch, options)
    except UsageError as exc:
        row.error = str(exc)
        return row

    runs = BudgetedRuns(session)

    def call():
        runs.run(feeds)

    return _measure(row, call, feeds, options)


def _measure(row: BenchRow, call: Callable[[], Any], feeds: dict[str, np.ndarray], options: BenchOptions) -> BenchRow:
    row.shapes = {k: list(v.shape) for k, v in feeds.items()}
    if row.batch is None:
        leading = [v.shape[0] for v in feeds.values() if v.ndim]
        row.batch = leading[0] if leading else 1
    try:
        row.warmup_ms = [_time(call) for _ in range(options.warmup)]
        times = np.array([_time(call) for _ in range(options.runs)])
    except Exception as exc:
        row.error = short_error(first_line(error_text(exc)))
        return row
    row.latency_ms = {"p50": round(float(np.percentile(times, 50)), 4),
                      "p90": round(float(np.percentile(times, 90)), 4),
                      "max": round(float(times.max()), 4), "mean": round(float(times.mean()), 4)}
    row.throughput = round(row.batch * 1e3 / float(times.mean()), 2)
    if options.audio_seconds:
        row.rtf = round(row.latency_ms["p50"] / 1e3 / (row.batch * options.audio_seconds), 6)
    return row


def short_error(error: str) -> str:
    """`Where '/Where': Attempting to broadcast ...` from onnxruntime's long status line."""
    from graphfix.validate.runner import failing_node, short_message

    where = failing_node(error)
    return f"{where[0]} '{where[1]}': {short_message(error)}" if where else error


def _time(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def rows_text(rows: list[BenchRow]) -> str:
    """A table: models side by side per batch, with each model's median relative to the first one's."""
    head = f"{'model':<32} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'max ms':>9} {'items/s':>10} {'RTF':>8} " \
           f"{'vs 1st':>7}"
    lines = [head]
    first: dict[int | None, float] = {}
    for row in rows:
        model = printable_path(row.model)  # names and errors come from the model: no escape, no `::` at a line start
        name = model if len(model) <= 32 else "…" + model[-31:]
        if row.error:
            lines.append(f"{name:<32} {row.batch or '':>5} error: {printable(row.error)}")
            continue
        p50 = row.latency_ms["p50"]
        base = first.setdefault(row.batch, p50)
        rtf = f"{row.rtf:.3g}" if row.rtf is not None else "-"
        lines.append(f"{name:<32} {row.batch:>5} {p50:>9.3f} {row.latency_ms['p90']:>9.3f} "
                     f"{row.latency_ms['max']:>9.3f} {row.throughput:>10.1f} {rtf:>8} {p50 / base:>6.2f}x")
    warm = [r for r in rows if r.warmup_ms]
    if warm:
        lines.append(f"warm-up: {len(warm[0].warmup_ms)} run(s) per row excluded from the figures "
                     f"(first warm-up run {max(r.warmup_ms[0] for r in warm):.1f} ms at most)")
    return "\n".join(lines)
