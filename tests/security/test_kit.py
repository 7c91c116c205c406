"""The kit itself: a read or a write under outside/ is seen, so a test that finds nothing means something."""

from hostile import SECRET


def test_reads_and_writes_outside_are_seen(sandbox):
    assert sandbox.touched() == []
    assert (sandbox.outside / "secret.bin").read_bytes() == SECRET
    assert sandbox.touched() == [str(sandbox.outside / "secret.bin")]
    (sandbox.outside / "new.txt").write_text("x")
    (sandbox.outside / "new.txt").unlink()
    assert sandbox.touched() == [str(sandbox.outside / "new.txt")]


def test_graphfix_runs_in_the_sandbox(sandbox):
    done = sandbox.run("rules")
    assert done.returncode == 0, done.stderr
    assert sandbox.touched() == []
