"""The forked worker (graphfix.core.forked) and the stopping signals: a `--timeout` alarm that comes while the fork
runs its at-fork callbacks must still stop the work. Python prints and ignores an exception raised in such a
callback, so an unmasked alarm there was lost: the child ran on, wrote its output, and graphfix exited 0 with a
traceback on stderr (seen on a loaded machine as `test_staging`'s `--timeout` case exiting 0)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from graphfix.core import forked


def test_an_alarm_during_the_forks_own_callbacks_stops_the_work(tmp_path):
    """A slow at-fork callback (standing in for a busy machine) lets the alarm come during the fork itself."""
    marker = tmp_path / "written"
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from graphfix.core import forked
        from graphfix.core.errors import TimedOut

        def expire(signum, frame):
            raise TimedOut("stopped")

        def work():
            time.sleep(1.0)
            open({str(marker)!r}, "w").close()  # what the child would write if it were not stopped
            return "done"

        forked.enable()
        os.register_at_fork(after_in_parent=lambda: time.sleep(0.3))
        signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        try:
            print(forked.run_forked(work, "model"))
        except TimedOut:
            print("stopped")
        time.sleep(1.5)  # long enough for a child left running to write
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "stopped", done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert not marker.exists()


def test_a_stop_sent_before_the_child_unblocks_its_signals_ends_the_child_not_in_the_callers_code(tmp_path):
    """Found by review (helper 36): a SIGTERM that reached a child between the fork and `_serve` raised (graphfix
    turns SIGTERM into SystemExit) when the child unblocked its signals, outside `_serve`: the child unwound into
    its parent's code. The signal is pending here when `_serve` starts; the child must end in `_serve`'s
    `os._exit`, and never run the line after it."""
    marker = tmp_path / "returned"
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
            held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            os.kill(os.getpid(), signal.SIGTERM)  # pending until unblocked
            read_fd, write_fd = os.pipe()
            os.dup(read_fd)  # a reader stays, as the parent is: the work's result could be written
            forked._serve(lambda: 1, read_fd, write_fd, held)
        finally:
            marker.write_text("the child ran its caller's code")
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1 and not marker.exists()


def test_a_child_stopped_while_it_moves_an_output_into_place_finishes_the_move(tmp_path):
    """Helper 127: a stop whose child takes longer than STOP_GRACE_S to move its output into place (a slow disk's
    fsyncs) was killed half-way, its data left without its graph, and the line said nothing was written. The child
    tells `committing` first: the parent waits for `committed`, and names what was written."""
    marker = tmp_path / "model.onnx"
    script = textwrap.dedent(f"""
        import signal, time
        from graphfix.core import forked
        from graphfix.core.critical import stop_with, uninterrupted
        from graphfix.core.errors import TimedOut

        def work():
            signal.signal(signal.SIGTERM, lambda *_: stop_with(SystemExit(143)))
            forked.committing({str(marker)!r})
            with uninterrupted():
                time.sleep(forked.STOP_GRACE_S + 1.5)  # past the grace, inside the move
                open({str(marker)!r}, "w").close()
                forked.committed({str(marker)!r})
            return "done"

        def expire(signum, frame):
            raise TimedOut("stopped")

        forked.enable()
        signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        try:
            print(forked.run_forked(work, "model"))
        except TimedOut:
            print("stopped", forked.committed_outputs())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == f"stopped {[str(marker)]}", done.stdout + done.stderr
    assert marker.exists()
