"""Runs graphfix commands in one long-lived process (imports once), one JSON job per stdin line.

Job: {"args": [...], "cwd": "...", "trace": ["/outside/dir", ...]}. Reply: {"rc", "out", "err", "seconds",
"exception", "opened"} where `opened` lists paths under a traced folder that Python opened (audit hook).
Job {"oracle": "model.onnx"}: whether onnxruntime creates a CPU session for it; reply {"loads", "why"}."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback

from click.testing import CliRunner

TRACED: list[str] = []
OPENED: list[str] = []


def _audit(event: str, args) -> None:
    if not TRACED or event not in ("open", "os.open", "os.listdir", "os.scandir", "shutil.copyfile",
                                  "os.link", "os.symlink", "mmap.__new__"):
        return
    target = args[0] if args else None
    if isinstance(target, bytes):
        target = target.decode(errors="replace")
    if not isinstance(target, (str, os.PathLike)):
        return
    if event == "os.link" and len(args) > 2 and args[2] not in (None, -1):
        return  # a name in a folder graphfix holds open (`src_dir_fd`): not the working folder's
    if not os.path.isabs(target) and not os.path.lexists(target):
        # a name opened in a folder graphfix holds open (`dir_fd`, which the "open" event does not carry: the
        # commit of an output), or nothing at all: a file read from the working folder exists there, and one
        # made there is seen by the kernel's watch of it (fuzz_opened)
        return
    try:
        real = os.path.realpath(os.fspath(target))
    except (TypeError, ValueError):
        return
    if any(real == t or real.startswith(t + os.sep) for t in TRACED):
        OPENED.append(f"{event} {real}")


def _peak_mb() -> float:
    """This process's own peak resident memory: VmHWM belongs to its address space, while ru_maxrss keeps the
    peak of the process that started it across fork and exec (a test runner that loaded large models)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    limit = int(os.environ.get("FUZZ_MEMORY_LIMIT", "0"))
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from graphfix.cli import cli

    replies = os.fdopen(os.dup(1), "w")  # child processes (onnxsim) write to fd 1: keep replies apart
    os.dup2(2, 1)
    sys.addaudithook(_audit)
    runner = CliRunner()
    home = os.getcwd()
    for line in sys.stdin:
        job = json.loads(line)
        if "oracle" in job:
            replies.write(json.dumps(_oracle(job["oracle"])) + "\n")
            replies.flush()
            continue
        TRACED[:] = [os.path.realpath(t) for t in job.get("trace", [])]
        OPENED.clear()
        os.chdir(job.get("cwd") or home)
        started = time.perf_counter()
        result = runner.invoke(cli, job["args"], catch_exceptions=True)
        seconds = time.perf_counter() - started
        TRACED.clear()
        exc = None
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            exc = "".join(traceback.format_exception(result.exception))[-3000:]
        reply = {"rc": result.exit_code, "out": result.stdout[-4000:], "err": result.stderr[-4000:],
                 "seconds": seconds, "exception": exc, "opened": OPENED[:20],
                 "maxrss_mb": _peak_mb()}
        os.chdir(home)
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def _oracle(model: str) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # whatever onnxruntime refuses the model for
        return {"loads": False, "why": " ".join(str(exc).split())[:300]}
    return {"loads": True, "why": ""}


if __name__ == "__main__":
    main()
