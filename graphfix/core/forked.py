"""One model's work in a forked child, so that a crash in native code costs that model only (issue #20).

onnxruntime's C++ can kill the process that runs it: an integer `Div(INT_MIN, -1)` between initializers raises
SIGFPE while a session folds constants, and graphfix died with exit 136, no message, its staging left behind and,
under `check --jobs`, every other model's result lost. The commands therefore do each model's work in a child
made with `os.fork()` before the model is read (`Forked(work, label)`); the child sends back what `work` returned
(or raised), pickled over a pipe, and exits. A child killed by a signal becomes `Crashed`, one line with exit 2;
the caller removes what the child left and goes on with the next model.

Why a fork: at that point the parent holds no model, no onnxruntime session and no thread of its own (numpy's and
onnxruntime's import-time threads are fork-safe); forking costs milliseconds and copies nothing (pages are shared
until written), where a spawned child would import onnxruntime again (seconds) and a child per onnxruntime call
would copy the weights to it. The model is read once, in the child; only the result (findings, a summary) crosses
the pipe. Only the `graphfix` command forks (`enable()`); where forking is not safe (see `can_fork`) the work runs
in the process itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from graphfix.core.errors import GraphfixError, InputError, InternalError

STOP_GRACE_S = 5.0  # a child asked to stop (--timeout, Ctrl-C, SIGTERM) cleans up within this, or is killed
COMMIT_GRACE_S = 120.0  # or within this while it moves an output into place (a slow disk's fsyncs, helper 127)
_in_child = False
_made_fd: int | None = None  # in a child: where `made` tells the parent what it creates
_setup: Callable[[], None] | None = None  # what each child does first (`enable`)
_enabled = False
_baseline: int | None = None  # native threads at the first fork
_made_here: list[str] = []  # in a child: the folders it made (`made`), for when no parent is left to remove them
_committed: list[str] = []  # outputs this run moved into place (`committed`), a child's included once it ends
COMMITTED = "committed:"  # what `made` tells before the path of an output a child moved into place
COMMITTING = "committing:"  # and before that of one it starts to move: a stop then waits for the move's end


class Crashed(InputError):
    """The child doing one model's work was killed by a signal (a crash in native code on that model)."""

    def __init__(self, label: str, signum: int, pid: int | None = None, made: tuple[str, ...] = ()):
        self.signum, self.pid, self.made = signum, pid, made  # the child, and the folders it said it made
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else f"signal {signum}"
        super().__init__(f"{label}: the work on this model crashed ({name}, {signal.strsignal(signum) or ''}) in "
                         "onnxruntime or another native library; nothing was written for it")


class Relayed(GraphfixError):
    """A GraphfixError from the child whose class cannot be rebuilt from its message: same line, same exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):
        return Relayed, (str(self), self.exit_code)


def enable(on: bool = True, setup: Callable[[], None] | None = None) -> None:
    """Let this process fork (the `graphfix` command calls this; `--debug` turns it off, so that a traceback shows
    where it arose), each child calling `setup` first (the command bounds its memory). A process that embeds
    graphfix (the Python API, a test runner, a harness) may hold onnxruntime sessions, whose thread pools a forked
    child inherits broken (it hangs on its first session): there the work runs in the process itself."""
    global _enabled, _setup
    _enabled, _setup = on, setup


def in_child() -> bool:
    """Whether this process is a forked worker (it forks no more: a thread of its own is safe here)."""
    return _in_child


# Signals whose default action ends the process at once, its folders left: a stop (SIGTERM), a closed terminal
# (SIGHUP), Ctrl-\ (SIGQUIT), a user's or a supervisor's signals (SIGUSR1, SIGUSR2) and a CPU limit (SIGXCPU).
# The `graphfix` command ends by an exception on each instead (graphfix.io.staging.install_signal_cleanup).
ENDING = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGXCPU)
# --timeout, Ctrl-C and those: handlers that raise
STOPPING = {signal.SIGALRM, signal.SIGINT, *ENDING}


def can_fork() -> bool:
    """Whether a fork is safe here: enabled, POSIX, not in a child, no other Python thread (its locks would stay
    taken) and no more native threads than at the first fork (an onnxruntime session's pool would be new)."""
    global _baseline
    if not (_enabled and hasattr(os, "fork") and not _in_child and threading.active_count() == 1):
        return False
    threads = _native_threads()
    if _baseline is None:
        _baseline = threads
    return threads is None or threads <= _baseline


def _native_threads() -> int | None:
    """This process's threads as the kernel counts them (numpy's and onnxruntime's too); None where unknown."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


class Forked:
    """`work()` in a forked child; `result()` returns its value, raises what it raised, or raises `Crashed`.

    The parent reads the pipe as the child writes (`read()`, e.g. when a selector says `fileno()` is ready), so a
    large result never blocks the child. Without `can_fork()`, `work` runs at once in this process."""

    def __init__(self, work: Callable[[], Any], label: str):
        self.label, self.pid, self.fd, self._chunks = label, None, None, []
        self._inline: tuple[str, Any] | None = None
        self._made_fd: int | None = None
        self._told: list[bytes] = []  # what the child told through `made` so far
        if not can_fork():
            self._inline = _outcome(work)
            return
        read_fd, write_fd = os.pipe()
        made_read, made_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        # What exists now lives until the process ends: the collector skips it from here on (Python's advice before
        # a fork). The child's collections then write no page it shares, and this process' final ones, at exit,
        # do not walk every object onnx, numpy and graphfix made (25 ms on `diagnose --static`).
        gc.freeze()
        # The stopping signals wait while the fork runs its at-fork callbacks (logging's, threading's): a handler that
        # raised in one (--timeout's SIGALRM) would be printed and ignored, and the work would go on to the end.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING)
        parent = os.getpid()
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            raise
        if pid == 0:  # the child: never returns into the caller's code
            os.close(made_read)
            _serve(work, read_fd, write_fd, held, made_write, parent)
        os.close(write_fd)
        os.close(made_write)
        self.pid, self.fd, self._made_fd = pid, read_fd, made_read
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a signal that came meanwhile is handled here
        except BaseException:
            self.kill()
            os.close(self.fd)
            raise

    def fileno(self) -> int:
        return self.fd

    def read(self) -> bool:
        """Take what the child wrote so far; False once it closed the pipe (done or dead)."""
        chunk = os.read(self.fd, 1 << 20)
        self._chunks.append(chunk)
        return bool(chunk)

    def result(self) -> Any:
        if self._inline is not None:
            return _unpack(self._inline)
        try:
            while self.read():
                pass
            _, status = os.waitpid(self.pid, 0)
        except BaseException:  # --timeout, Ctrl-C: the child must not outlive the parent's decision
            self.kill()
            raise
        finally:
            os.close(self.fd)
            made = self._made()
        pid, self.pid = self.pid, None
        if os.WIFSIGNALED(status):
            raise Crashed(self.label, os.WTERMSIG(status), pid, made)
        data = b"".join(self._chunks)
        if not data:
            raise InternalError(f"{self.label}: the worker exited with status {os.waitstatus_to_exitcode(status)} "
                                "and no result")
        return _unpack(pickle.loads(data))  # written by our own child

    def _made(self) -> tuple[str, ...]:
        """The folders the child said it made (`made`), read once it has ended; closes that pipe."""
        if self._made_fd is None:
            return ()
        with contextlib.suppress(OSError):
            os.set_blocking(self._made_fd, True)
            while chunk := os.read(self._made_fd, 1 << 16):
                self._told.append(chunk)
        os.close(self._made_fd)
        self._made_fd = None
        told = self._told_so_far()
        _committed.extend(p.removeprefix(COMMITTED) for p in told if p.startswith(COMMITTED))
        return tuple(p for p in told if not p.startswith((COMMITTED, COMMITTING)))

    def _told_so_far(self) -> list[str]:
        return [p.decode("utf-8", "surrogateescape") for p in b"".join(self._told).split(b"\0") if p]

    def _committing(self) -> bool:
        """Whether the child, still running, is moving an output into place (it told `committing` and not yet
        `committed`): read without waiting from what it told so far."""
        if self._made_fd is None:
            return False
        with contextlib.suppress(OSError):  # BlockingIOError: nothing more told yet
            os.set_blocking(self._made_fd, False)
            while chunk := os.read(self._made_fd, 1 << 16):
                self._told.append(chunk)
        told = self._told_so_far()
        return sum(p.startswith(COMMITTING) for p in told) > sum(p.startswith(COMMITTED) for p in told)

    def kill(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the child (if still running) and reap it: SIGTERM first, so that it removes its scratch and staging
        folders on the way out (graphfix turns SIGTERM into SystemExit), SIGKILL after `grace_s`. Then the folders
        it said it made go, and no other (`on_left`: staging.remove_left): a child blocked in one onnxruntime call
        runs no Python until the call returns, so the SIGKILL found it with its folders still there."""
        if self.pid is None:
            return
        pid = self.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _reaped(pid, grace_s) and not (self._committing() and _reaped(pid, COMMIT_GRACE_S)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        self.pid = None
        _remove_left(pid, self._made())


def _reaped(pid: int, grace_s: float) -> bool:
    """Whether the child `pid` ended (and was reaped) within `grace_s` seconds."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return True
        time.sleep(0.02)
    return False


_LEFT_HANDLERS: list[Callable[[int, tuple[str, ...]], object]] = []


def on_left(handler: Callable[[int, tuple[str, ...]], object]) -> None:
    """Register what removes the folders a killed child said it made: `graphfix.io.staging` registers its
    `remove_left` when imported (it makes every such folder, and sits above this module, which knows no folder)."""
    if handler not in _LEFT_HANDLERS:
        _LEFT_HANDLERS.append(handler)


def _remove_left(pid: int, made: tuple[str, ...]) -> None:
    """The folders the ended child `pid` said it made, where they are still its own (see `on_left`)."""
    if made:
        for handler in _LEFT_HANDLERS:
            handler(pid, made)


def run_forked(work: Callable[[], Any], label: str) -> Any:
    """`work()` in a forked child (see `Forked`); its value, its exception, or `Crashed`."""
    return Forked(work, label).result()


def _outcome(work: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "value", work()
    except BaseException as exc:  # relayed to the parent, which raises it
        return "raised", exc


def _unpack(outcome: tuple[str, Any]) -> Any:
    kind, value = outcome
    if kind == "raised":
        raise value
    return value


def made(path: str) -> None:
    """In a forked child, tell the parent that this folder was just made by it: if the child crashes, the parent
    removes it (graphfix.io.staging.remove_left), and nothing it was not told of."""
    _made_here.append(path)
    _tell(path)


def committing(path: str) -> None:
    """In a forked child, tell the parent that an output starts to move into place: a stop it sends meanwhile waits
    for `committed` (up to COMMIT_GRACE_S) before a SIGKILL could leave its data without its graph."""
    if _in_child:
        _tell(COMMITTING + path)


def committed(path: str) -> None:
    """Record an output moved into place by this run; in a forked child, tell the parent too (a stop that ends
    the run after it says it was written: `committed_outputs`)."""
    _committed.append(path)
    if _in_child:
        _tell(COMMITTED + path)


def _tell(text: str) -> None:
    """Write one entry to the parent through `made`'s pipe (a child's; a full pipe loses it, never blocks)."""
    if _made_fd is not None:
        with contextlib.suppress(OSError):
            os.write(_made_fd, os.fsencode(text) + b"\0")


def committed_outputs() -> list[str]:
    """The outputs this run moved into place, in order (a child's once its parent heard of its end)."""
    return list(_committed)


def _serve(work: Callable[[], Any], read_fd: int, write_fd: int, held, made_fd: int | None = None,
           parent: int | None = None) -> None:
    """The child's whole life. Its stopping signals are unblocked inside the `try`: one sent before (a stop right
    after the fork) raises here and ends in `os._exit`, never in the caller's code (helper 36 saw such a child
    unwind into its parent's code and write its SystemExit into the parent's own result pipe)."""
    global _in_child, _made_fd
    _in_child, _made_fd = True, made_fd
    if made_fd is not None:
        os.set_blocking(made_fd, False)  # the parent reads it at the end: a full pipe loses a name, never blocks
    code = 1
    try:
        _end_with(parent)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        os.close(read_fd)
        if _setup is not None:
            _setup()
        data = _pickled(_outcome(work))
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(data)
        code = 0
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed stream: nothing to flush
                stream.flush()
        os._exit(code)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _end_with(parent: int | None) -> None:
    """A child whose parent ended (SIGKILL, or any end that left it no time to stop its child) is sent SIGTERM and
    stops as if its parent had stopped it, writing nothing: it went on to write the output seconds after the user
    had killed graphfix. Linux only (prctl); a parent gone before this call is seen by `getppid`."""
    if parent is None:
        return
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        raise SystemExit(128 + signal.SIGTERM)
    default = threading.stack_size(ORPHAN_STACK)  # not the 8 MB a thread's stack takes of GRAPHFIX_MAX_MEMORY
    try:
        threading.Thread(target=_orphaned, args=(parent,), name="graphfix-orphan", daemon=True).start()
    finally:
        threading.stack_size(default)


ORPHAN_POLL_S = 0.5
ORPHAN_STACK = 256 << 10  # its loop needs little


def _orphaned(parent: int) -> None:
    """The last word on a child whose parent ended: SIGTERM's handler is Python, which never runs while native
    code holds the main thread (a Loop of 10^15 steps in onnxruntime ran on at full speed for as long as the
    machine did, helper 104). Past the grace, the folders it made are removed and it ends."""
    while os.getppid() == parent:
        time.sleep(ORPHAN_POLL_S)
    time.sleep(STOP_GRACE_S)  # the handler's own unwinding, where the main thread runs Python
    with contextlib.suppress(Exception):
        _remove_left(os.getpid(), tuple(_made_here))
    os._exit(128 + signal.SIGTERM)


def _pickled(outcome: tuple[str, Any]) -> bytes:
    """The outcome for the pipe; an exception that does not come back the same (a constructor that rewrites its
    message, an unpicklable attribute) goes as its line and exit code."""
    kind, value = outcome
    try:
        data = pickle.dumps(outcome)
        if kind == "value" or str(pickle.loads(data)[1]) == str(value):
            return data
    except Exception:  # sent as a line below
        if kind == "value":
            raise
    if isinstance(value, GraphfixError):
        return pickle.dumps(("raised", Relayed(str(value), value.exit_code)))
    return pickle.dumps(("raised", InternalError(f"{type(value).__name__}: {value}")))
