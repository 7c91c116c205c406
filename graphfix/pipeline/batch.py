"""Checking many models: one job per model, each in a forked child (several at once with --jobs), with a progress
bar and a summary.

A child per model (`graphfix.core.forked`) keeps a crash in onnxruntime to that model. The parent forks before it
reads any model or starts any session; where it does not fork (a process embedding graphfix, `--debug`), one
worker checks in this process and more are started with `spawn`. Findings come back without their fix closures
(they cannot be pickled).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import selectors
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from graphfix.core.config import filter_findings
from graphfix.core.errors import GraphfixError
from graphfix.core.forked import Crashed, Forked, can_fork
from graphfix.core.registry import find_rule
from graphfix.core.rule import Finding, Rejection, RuleOptions
from graphfix.io.loading import load_model
from graphfix.io.staging import remove_left
from graphfix.pipeline.diagnose import diagnose_loaded, merge_runtime_findings, runtime_findings


@dataclass
class Job:
    """One model to check, with everything a worker process needs (all picklable)."""

    path: Path
    rules: tuple[str, ...]  # rule codes to run
    rule_options: RuleOptions
    probing: Any = None  # ValidationOptions, or None for static analysis only
    select: tuple[str, ...] = ()  # codes kept (all when empty), runtime findings included
    ignore: tuple[str, ...] = ()  # codes dropped, from --skip, [tool.graphfix] ignore and per-file-ignores


@dataclass
class Outcome:
    """What checking one model found: findings, how many came from runtime probing, or why it could not look."""

    path: str
    findings: list[Finding] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    runtime_failures: int = 0  # error-level findings from the onnxruntime probe (after filtering)
    error: str | None = None
    exit_code: int = 0  # of the error
    seconds: float = 0.0
    crashed: bool = False  # the child checking it died (the error says how)

    def to_json(self, show_rejected: bool = False) -> dict[str, Any]:
        """The `diagnose` JSON schema: path, error, findings (and rejected with --show-rejected)."""
        findings = [f.to_json() for f in self.findings]
        data: dict[str, Any] = {"path": self.path, "error": self.error, "findings": findings}
        if show_rejected:
            data["rejected"] = [r.to_json() for r in self.rejections]
        return data


def check_model(job: Job) -> Outcome:
    """Static rules, then the onnxruntime probe at several sizes; findings filtered by the job's codes."""
    start = time.perf_counter()
    try:  # loaded once: the probe runs the model as it was checked, not the file read again
        loaded = load_model(job.path, unexpanded=True)
    except GraphfixError as exc:
        return Outcome(str(job.path), error=str(exc), exit_code=exc.exit_code, seconds=time.perf_counter() - start)
    report = diagnose_loaded(loaded, [find_rule(code) for code in job.rules], job.rule_options, None)
    outcome = Outcome(report.path, rejections=report.rejections, error=report.error, exit_code=report.exit_code)
    runtime: list[Finding] = []
    if report.error is None and job.probing is not None and not report.skipped:  # skipped: the finding says it
        try:
            runtime = runtime_findings(loaded, job.probing)
        except GraphfixError as exc:
            outcome.error, outcome.exit_code = str(exc), exc.exit_code
    runtime = filter_findings(runtime, job.select, job.ignore)
    findings = filter_findings(report.findings, job.select, job.ignore)
    outcome.runtime_failures = sum(f.severity.value == "error" for f in runtime)
    merge_runtime_findings(findings, runtime)  # a confirmed static finding is not reported twice
    outcome.findings = [portable(f) for f in findings]
    outcome.seconds = time.perf_counter() - start
    return outcome


def run_jobs(jobs: list[Job], workers: int, progress: bool = False) -> list[Outcome]:
    """Outcomes in the order of `jobs`, each model checked in a forked child of its own (`graphfix.core.forked`):
    a model that crashes onnxruntime gets an error outcome (exit 2) and the others keep theirs. Up to `workers`
    children run at once. Where forking is not safe, one worker checks here and more use a spawned pool."""
    workers = max(1, min(workers, len(jobs)))
    with _progress(len(jobs), progress) as advance:
        if can_fork():
            warm_up()
            return _run_forked(jobs, workers, advance)
        if workers == 1:
            outcomes = []
            for job in jobs:
                outcomes.append(check_model(job))
                advance(outcomes[-1])
            return outcomes
        # the fallback where no fork is safe: its modules (multiprocessing, 4 ms) load only here, not for every command
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from multiprocessing import get_context

        results: list[Outcome | None] = [None] * len(jobs)
        with _safe_path_children(), ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(check_model, job): index for index, job in enumerate(jobs)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                advance(results[futures[future]])
        return [r for r in results if r is not None]


def warm_up() -> None:
    """Import, once and before forking, what each model's child would otherwise import again (the analysis, the
    probe, onnxruntime's symbolic shape inference and the sympy parts it loads on first use)."""
    import numpy.random  # noqa: F401 - inputs are synthesized with it
    import sympy.tensor.tensor  # noqa: F401 - loaded by the first symbolic shape inference

    import graphfix.pipeline.repair
    import graphfix.validate  # noqa: F401
    from graphfix.analysis.shapes import _symbolic_shape_infer

    _symbolic_shape_infer()


def _run_forked(jobs: list[Job], workers: int, advance: Callable[[Outcome], None]) -> list[Outcome]:
    results: list[Outcome | None] = [None] * len(jobs)
    waiting = list(enumerate(jobs))
    running: dict[int, tuple[int, Forked]] = {}
    try:
        with selectors.DefaultSelector() as selector:
            while waiting or running:
                while waiting and len(running) < workers:
                    index, job = waiting.pop(0)
                    child = Forked(functools.partial(check_model, job), str(job.path))
                    running[child.fileno()] = index, child
                    selector.register(child.fileno(), selectors.EVENT_READ)
                for key, _ in selector.select():
                    index, child = running[key.fd]
                    if child.read():
                        continue
                    selector.unregister(key.fd)
                    del running[key.fd]
                    results[index] = _collect(child, jobs[index])
                    advance(results[index])
    finally:
        for _, child in running.values():
            child.kill()
    return [r for r in results if r is not None]


def _collect(child: Forked, job: Job) -> Outcome:
    """The child's outcome; a crashed child's model gets the crash as its error, and the scratch folders it left
    go (`staging.remove_left`)."""
    try:
        return child.result()
    except Crashed as exc:
        remove_left(exc.pid, exc.made)
        return Outcome(str(job.path), error=str(exc), exit_code=exc.exit_code, crashed=True)


@contextlib.contextmanager
def _safe_path_children() -> Iterator[None]:
    """Spawned workers (and multiprocessing's resource tracker) run `python -c ...`, which puts the working folder
    first on sys.path: a `multiprocessing/` package planted there was imported. PYTHONSAFEPATH keeps it off."""
    previous = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["PYTHONSAFEPATH"]
        else:
            os.environ["PYTHONSAFEPATH"] = previous


def default_workers() -> int:
    return os.cpu_count() or 1


def should_show_progress(fmt: str) -> bool:
    """A progress bar only for text output on a terminal (never in JSON/SARIF, CI logs or pre-commit)."""
    return fmt == "text" and sys.stderr.isatty()


def summary_table(outcomes: list[Outcome], seconds: float, failed: int, names: dict[str, str]) -> str:
    """Models, how many failed or could not be read, findings by rule, and the time taken."""
    errors = sum(o.error is not None for o in outcomes)
    counts = Counter((f.rule, f.name or names.get(f.rule, "")) for o in outcomes for f in o.findings)
    models = f"{len(outcomes)} model{'s' if len(outcomes) != 1 else ''}"
    lines = [f"graphfix check: {models}, {failed} failed, {errors} unreadable, "
             f"{sum(counts.values())} findings in {seconds:.1f} s"]
    if counts:
        lines.append(f"  {'rule':<6} {'name':<22} {'findings':>8}")
        for (code, name), count in sorted(counts.items()):  # by name too: a skipped probe is no runtime failure
            lines.append(f"  {code:<6} {name:<22} {count:>8}")
    return "\n".join(lines)


def portable(finding: Finding) -> Finding:
    """The finding without its fix closure, so that it can cross process boundaries."""
    if finding.fix is None:
        return finding
    return dataclasses.replace(finding, fix=dataclasses.replace(finding.fix, apply=None))


class _progress:
    """click.progressbar on stderr when `show`, else nothing; yields a function to call per finished job."""

    def __init__(self, total: int, show: bool):
        self.total, self.show, self.bar = total, show and total > 1, None

    def __enter__(self) -> Callable[[Outcome], None]:
        if not self.show:
            return lambda outcome: None
        self.bar = click.progressbar(length=self.total, label="checking", file=sys.stderr,
                                     item_show_func=lambda o: Path(o.path).name if o else None)
        bar = self.bar.__enter__()
        return lambda outcome: bar.update(1, outcome)

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc_info)
