"""Runs the six commands on a model folder in a long-lived worker, and judges each run."""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

WORKER = Path(__file__).with_name("fuzz_worker.py")
COMMANDS = ("diagnose", "diagnose --static", "repair", "check", "extract", "freeze")


@dataclass
class Run:
    case: str
    command: str
    rc: int | None
    seconds: float
    err: str = ""
    out: str = ""
    problems: list[str] = field(default_factory=list)


class Worker:
    def __init__(self, tmp: Path, memory_limit: int = 6 << 30, extra_env: dict | None = None) -> None:
        self.tmp = tmp
        self.memory_limit = memory_limit
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TMPDIR": str(self.tmp), "FUZZ_MEMORY_LIMIT": str(self.memory_limit),
               "OMP_NUM_THREADS": "1", **self.extra_env}
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env, text=True, start_new_session=True)

    def run(self, args: list[str], cwd: Path, trace: list[Path], budget: float) -> dict | None:
        """The worker's reply, or None when it ran past `budget` seconds or died (it is then restarted)."""
        return self._ask({"args": args, "cwd": str(cwd), "trace": [str(t) for t in trace]}, budget)

    def onnxruntime_loads(self, model: Path, budget: float) -> tuple[bool, str]:
        """Whether onnxruntime creates a CPU session for `model` (the judge of a malformed model), and why not;
        a worker that dies or runs out of time on it counts as a refusal."""
        reply = self._ask({"oracle": str(model)}, budget)
        return (reply["loads"], reply["why"]) if reply else (False, "onnxruntime died or ran out of time")

    def _ask(self, job: dict, budget: float) -> dict | None:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], budget)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            return None
        return json.loads(line)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.proc = None


def worker_count() -> int:
    """Worker processes run at once: GRAPHFIX_FUZZ_WORKERS, else one per core (2 to 4). Most of a run that gets
    past loading is spent in onnxsim's child process importing onnx (seconds): runs side by side overlap it."""
    given = os.environ.get("GRAPHFIX_FUZZ_WORKERS", "")
    return int(given) if given.isdigit() and int(given) > 0 else max(2, min(4, os.cpu_count() or 1))


def run_parallel(jobs: Sequence, tmp: Path, run_one: Callable[[Worker, object], list[Run]],
                 workers: int | None = None) -> list[Run]:
    """`run_one(worker, job)` for every job, on several workers at once (each with its own temp folder, so a
    leftover is still traced to its run); the runs come back in the order of `jobs`."""
    pool = [Worker(tmp / f"worker{i}") for i in range(max(1, min(workers or worker_count(), len(jobs))))]
    pending = deque(enumerate(jobs))
    results: list[list[Run]] = [[] for _ in jobs]
    failures: list[BaseException] = []

    def drive(worker: Worker) -> None:
        while pending and not failures:
            try:
                index, job = pending.popleft()
            except IndexError:
                return
            try:
                results[index] = run_one(worker, job)
            except BaseException as exc:  # re-raised in the test's thread
                failures.append(exc)

    threads = [threading.Thread(target=drive, args=(worker,), daemon=True) for worker in pool]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for worker in pool:
            worker.stop()
    if failures:
        raise failures[0]
    return [run for runs in results for run in runs]


def digest(folder: Path) -> dict[str, str]:
    result = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file():
            result[str(path)] = "link" if path.is_symlink() else "other"
        else:
            result[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


def command_args(command: str, model: Path, out: Path, names: dict[str, str]) -> list[str]:
    if command == "diagnose":
        return ["diagnose", str(model)]
    if command == "diagnose --static":
        return ["diagnose", "--static", str(model)]
    if command == "repair":
        return ["repair", str(model), "-o", str(out)]
    if command == "check":
        return ["check", "--jobs", "1", str(model)]
    if command == "extract":
        return ["extract", str(model), "--inputs", names["input"], "--outputs", names["output"], "-o", str(out)]
    return ["freeze", str(model), "--input", names["freeze"], "-o", str(out)]


def expected_exits(model: Path, loads: bool, why: str = "") -> tuple[set[int], str]:
    """The exit codes the README documents for a mutant, from every command: 2 for a malformed model (one
    onnxruntime refuses to load, or one the README's list refuses although onnxruntime loads it); 1 or 2, never 0, for
    one whose shapes onnxruntime's shape inference refuses (dims or ranks that do not fit: error findings of the
    rules and the probe, or a refusal for a listed reason found first); 0 or 1 (a verdict) for a model
    onnxruntime loads."""
    import onnx

    if not loads and "ShapeInferenceError" in why and "Type Error" not in why:
        return {1, 2}, "onnxruntime refuses its shapes: an error finding or a refusal"
    if not loads:
        return {2}, "onnxruntime refuses to load it"
    proto = onnx.load(str(model), load_external_data=False)
    if listed := refused_though_loadable(proto):
        return {2}, listed
    return {0, 1}, "onnxruntime loads it"


NAME_FIELDS = {"name", "input", "output", "op_type", "domain", "ref_attr_name", "attribute"}  # doc strings are free


def refused_though_loadable(proto) -> str:
    """What the README's list refuses that onnxruntime loads: sparse tensors, names that are not UTF-8, list
    attributes that are empty; '' when none."""
    from onnx import AttributeProto

    if proto.graph.sparse_initializer:
        return "a sparse tensor"
    pending = [proto]
    while pending:
        message = pending.pop()
        for descriptor, value in message.ListFields():
            items = value if descriptor.is_repeated else [value]
            if descriptor.name in NAME_FIELDS and any(isinstance(item, bytes) for item in items):
                return "a name that is not UTF-8"
            kind = descriptor.message_type.name if descriptor.message_type is not None else ""
            if kind and kind != "TensorProto":
                pending.extend(items)
            if kind == "AttributeProto":
                lists = (AttributeProto.INTS, AttributeProto.FLOATS, AttributeProto.STRINGS)
                constant = getattr(message, "op_type", None) == "Constant"  # its empty value_ints is a tensor
                if any(a.type in lists and not (a.ints or a.floats or a.strings) and not constant for a in items):
                    return "an empty list attribute"
    return ""


def judge(run: Run, reply: dict | None, budget: float) -> None:
    if reply is None:
        run.problems.append(f"past budget ({budget:.0f} s) or worker died")
        return
    text = reply["out"] + reply["err"]
    if reply["exception"] or "Traceback" in text:
        run.problems.append("traceback: " + (reply["exception"] or text)[-600:])
    if "internal error" in text:
        run.problems.append("internal error: " + _line(text, "internal error"))
    if "crashed" in text:
        run.problems.append("rule crash: " + _line(text, "crashed"))
    if reply["rc"] not in (0, 1, 2):
        run.problems.append(f"exit code {reply['rc']}")
    if reply["seconds"] > budget:
        run.problems.append(f"took {reply['seconds']:.1f} s")
    if reply.get("opened"):
        run.problems.append(f"opened outside the model folder: {reply['opened'][:3]}")


def _line(text: str, needle: str) -> str:
    return next((line for line in text.splitlines() if needle in line), "")[:300]


def run_case(worker: Worker, case: str, folder: Path, model: Path, names: dict[str, str], budget: float,
             outside: list[Path] = (), cwd: Path | None = None, watch=None,
             commands=COMMANDS) -> list[Run]:
    """All commands on one model folder; checks input unchanged, no leftovers, outputs only where expected."""
    runs: list[Run] = []
    out_dir = folder.parent / (folder.name + "-out")
    before = digest(folder)
    if watch is not None:
        watch.events()  # hashing the folder read a hard link's target: not the command's doing
    for command in commands:
        out_dir.mkdir(exist_ok=True)
        out = out_dir / "out.onnx"
        started = time.perf_counter()
        reply = worker.run(command_args(command, model, out, names), cwd or out_dir,
                           [p for p in outside if p.is_dir()], budget)
        run = Run(case, command, reply and reply["rc"], time.perf_counter() - started,
                  (reply or {}).get("err", ""), (reply or {}).get("out", ""))
        judge(run, reply, budget)
        if watch is not None and (seen := watch.events()):
            run.problems.append(f"kernel saw opens outside: {sorted(set(seen))[:3]}")
        if digest(folder) != before:
            run.problems.append("input changed")
        if watch is not None:
            watch.events()
        extra = [p.name for p in out_dir.iterdir() if p.name not in ("out.onnx", "out.onnx.data", *_data_of(out_dir))]
        if extra:
            run.problems.append(f"leftover beside output: {extra}")
        tmp_left = list(worker.tmp.iterdir()) if worker.tmp.exists() else []  # onnxruntime's .ses included
        if tmp_left:
            run.problems.append(f"leftover in temp: {[p.name for p in tmp_left]}")
            for p in tmp_left:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
        shutil.rmtree(out_dir, ignore_errors=True)
        runs.append(run)
    return runs


def _data_of(out_dir: Path) -> list[str]:
    """The external data files the written output reads (an unchanged model keeps its data file's name)."""
    import onnx

    from graphfix.io.external_data import external_refs

    written = out_dir / "out.onnx"
    if not written.is_file():
        return []
    try:
        return [ref.location for ref in external_refs(onnx.load(str(written), load_external_data=False))]
    except Exception:  # not a model: nothing it reads is allowed
        return []
