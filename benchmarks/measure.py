"""Whole-process measurement: wall time and the peak memory of the process tree a command starts.

    result = measure("graphfix repair", [sys.executable, "-m", "graphfix", "repair", ...], repeat=5)
    result["seconds"], result["peak_mib"], result["runs"]

Time is a monotonic clock read just before the start and just after the command is reaped: imports, start-up
and any child processes included. Peak memory is that of the whole tree: the proportional set size (PSS: each
page counted once, split among the processes that share it, so that a forked child's copy-on-write pages are not
counted twice) of the command and of every process descended from it (graphfix's forked child, its onnxsim
child), summed, sampled every SAMPLE_S; it is never below the largest single process's own peak (`ru_maxrss`
from `os.wait4`), which a short spike between two samples still reaches. Only public interfaces: /proc and
os.wait4 (Linux).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time

SAMPLE_S = 0.05


def measure(name: str, argv: list[str], repeat: int = 1, timeout: float = 1800, env: dict | None = None) -> dict:
    """The median wall time and the median peak of `repeat` runs; a run that fails (exit other than 0 or 1) ends
    the series and is reported as it is."""
    runs = []
    for _ in range(repeat):
        runs.append(run_once(argv, timeout, env))
        if runs[-1]["exit"] not in (0, 1):
            return {"tool": name, **runs[-1], "runs": [runs[-1]["seconds"]]}
    return {"tool": name, "seconds": round(statistics.median(r["seconds"] for r in runs), 3),
            "peak_mib": round(statistics.median(r["peak_mib"] for r in runs), 1),
            "exit": runs[-1]["exit"], "note": runs[-1]["note"], "runs": [r["seconds"] for r in runs],
            "peaks_mib": [r["peak_mib"] for r in runs]}


def run_once(argv: list[str], timeout: float, env: dict | None = None) -> dict:
    """Wall seconds and tree peak (MiB) of one run of `argv`; stdout is discarded, the last stderr line kept."""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors, env=env)
        tree_peak = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            tree_peak = max(tree_peak, tree_pss(proc.pid))
            time.sleep(SAMPLE_S)
        wall = time.perf_counter() - start
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        lines = errors.read().decode(errors="replace").strip().splitlines()
    peak = max(tree_peak, usage.ru_maxrss * 1024)
    return {"seconds": round(wall, 3), "peak_mib": round(peak / (1 << 20), 1), "exit": code,
            "note": lines[-1][:200] if code not in (0, 1) and lines else ""}


def tree_pss(root: int) -> int:
    """Bytes `root` and all its descendants hold now, shared pages split among their sharers (0 once gone)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _parent(int(entry))
            if ppid is not None:
                parents.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += _pss(pid)
        stack.extend(parents.get(pid, ()))
    return total


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[1])  # the name may hold spaces and parentheses


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0
