"""Time bounds for analysis that can run long: onnxruntime's symbolic shape inference spends minutes in sympy on
some real graphs (torchvision Mask R-CNN: `_infer_Slice` proving inequalities between nested floor/Min
expressions of the resized image size).

`Watchdog(seconds)` raises `OutOfTime` in the thread that entered it once its time is up, and `step(seconds)`
bounds one part of the work more tightly. A watcher thread asks the interpreter to raise the exception in the
working thread (`PyThreadState_SetAsyncExc`): it works on any thread (repair's worker threads, batch's worker
processes), leaves signals to their owners (pytest-timeout, the caller), and interrupts Python code between two
bytecodes, which is where sympy spends its time; one long C call finishes first. Measured on the shared 2-core
machine under load: 0.3 ms to start and stop a watchdog and 5 us per step, against 1 us for a SIGALRM timer
(main thread only, and pytest-timeout or the caller may own the signal) and 4 s for a spawned child process to
import onnxruntime's inference, before the model is even sent to it.
"""

from __future__ import annotations

import ctypes
import math
import threading
import time

from graphfix.core import values

SHAPE_SECONDS = 3.0  # one symbolic shape inference of a whole graph; GRAPHFIX_SHAPE_SECONDS overrides it
NODE_SECONDS = 0.5  # one node inside it (normal nodes take milliseconds)
ECHO_SECONDS = 5.0  # the echo check of one fix (graphfix.analysis.echoes walks near every constant)
POLL_SECONDS = 0.02
RESEND_SECONDS = 0.25  # an OutOfTime swallowed on its way (a weakref callback's) is sent again after this
_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)


class OutOfTime(BaseException):  # a BaseException: a library's `except Exception` lets it through
    """Raised inside a Watchdog when its time, or the time of the current step, is up."""


def shape_seconds() -> float:
    """The time one symbolic shape inference may take, in seconds (GRAPHFIX_SHAPE_SECONDS, default 3)."""
    return max(0.05, values.from_env("GRAPHFIX_SHAPE_SECONDS", values.seconds, SHAPE_SECONDS))


class Watchdog:
    """`with Watchdog(4.0) as dog: ... with dog.step(0.5): ...` raises OutOfTime in this thread when the whole
    or the step runs out of time. Catch it outside the block that bounds it: it can surface while leaving it."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._deadline = math.inf
        self._step_deadline = math.inf
        self._pending = False
        self._sent = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread_id = ctypes.c_ulong(threading.get_ident())
        self._watcher = threading.Thread(target=self._watch, name="graphfix-watchdog", daemon=True)

    @property
    def expired(self) -> bool:
        """Whether the whole time is up."""
        return time.monotonic() >= self._deadline

    def __enter__(self) -> Watchdog:
        self._thread_id = ctypes.c_ulong(threading.get_ident())
        self._deadline = time.monotonic() + self.seconds
        self._watcher.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._stop.set()  # under the lock: no exception is sent once the block is left
        self._disarm()

    def step(self, seconds: float) -> _Step:
        return _Step(self, seconds)

    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            with self._lock:
                if self._stop.is_set():
                    return
                now = time.monotonic()
                if now >= min(self._deadline, self._step_deadline) and (
                        not self._pending or now - self._sent >= RESEND_SECONDS):
                    # Still inside after a send: the exception surfaced where Python drops it (a callback run by
                    # the garbage collector prints "Exception ignored in" and goes on): send it again.
                    self._pending, self._sent = True, now
                    _set_async_exc(self._thread_id, ctypes.py_object(OutOfTime))

    def _disarm(self) -> None:
        """End the current step; drop an OutOfTime that was sent but has not surfaced yet."""
        with self._lock:
            self._step_deadline = math.inf
            if self._pending:
                _set_async_exc(self._thread_id, ctypes.py_object())  # NULL: clears a pending async exception
                self._pending = False


class _Step:
    def __init__(self, dog: Watchdog, seconds: float):
        self.dog, self.seconds = dog, seconds

    def __enter__(self) -> None:
        self.dog._step_deadline = time.monotonic() + self.seconds

    def __exit__(self, *exc) -> None:
        self.dog._disarm()
