"""#20 item 7: graphfix deletes only folders it made in the same run. A folder left by a graphfix process killed
outright is kept: its name and marker are text anyone can write (a review forged one in a checkout, and the old
sweep of dead runs' folders deleted it with the user's file inside). A crashed child's folders are removed by its
parent, which saw it crash: named with its pid, made since it was forked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "hubert_padding_mask" / "model.onnx"

# Folders as a graphfix process killed outright leaves them: made by graphfix's own code, then os._exit.
KILLED_RUN = """
import os, sys
from pathlib import Path
from graphfix.io import staging
held = [staging.scratch_dir(), staging.scratch_dir("sim")]  # kept: a collected one would clean up
for folder in held:
    folder.__enter__()
Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True)
staging.staging_dir(Path(sys.argv[1]))
print(os.getpid(), flush=True)
if sys.argv[2] == "wait":
    sys.stdin.readline()
os._exit(0)
"""


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def graphfix_folders(*folders: Path) -> list[str]:
    return sorted(p.name for folder in folders for p in folder.iterdir() if "graphfix" in p.name)


def killed_run(sandbox, output: Path, wait: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(output), "wait" if wait else "exit"],
                            env={**os.environ, "TMPDIR": str(sandbox.tmp)}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def look_alikes(sandbox, out: Path) -> list[Path]:
    """A user's folders with names like graphfix's, each holding a file the user cares about."""
    pid = dead_pid()
    folders = [sandbox.tmp / "graphfix-2024-12-01", sandbox.tmp / f"graphfix-{pid}-12-01",
               sandbox.tmp / f"results.graphfix-{pid}-runs", sandbox.tmp / f"graphfix-{pid}-abcdefgh",
               out / f"results.graphfix-{pid}-runs", out / f".out.onnx.graphfix-{pid}-abcdefgh.tmp"]
    for folder in folders:
        folder.mkdir(parents=True)
        (folder / "results.csv").write_text("the user's own\n")
    return folders


def test_user_folders_that_look_like_staging_are_kept(sandbox):
    out = sandbox.root / "out"
    folders = look_alikes(sandbox, out)
    assert sandbox.run("rules").returncode == 0
    done = sandbox.run("repair", str(SAMPLE), "-o", str(out / "out.onnx"))
    assert done.returncode == 0, done.stderr
    assert [(f / "results.csv").read_text() for f in folders] == ["the user's own\n"] * len(folders)


def test_folders_of_another_run_are_kept_even_with_a_marker(sandbox):
    """A killed run's folders (genuine markers), one forged in a checkout from a dead pid's name (a marker of that
    text, a file the user keeps), and one behind a link: no command deletes any of them."""
    out = sandbox.root / "out"
    killed_run(sandbox, out / "out.onnx").communicate(timeout=60)
    pid = dead_pid()
    forged = out / f".notes.graphfix-{pid}-abcdefgh.tmp"
    forged.mkdir()
    (forged / ".graphfix-staging").write_text(f"graphfix staging {pid} abcdefgh\n")
    (forged / "committed-file.txt").write_text("the user's own\n")
    killed_run(sandbox, sandbox.outside / "victim.onnx").communicate(timeout=60)
    (victim,) = [p for p in sandbox.outside.iterdir() if p.name.startswith(".victim.onnx.graphfix-")]
    (out / victim.name).symlink_to(victim)
    left = graphfix_folders(sandbox.tmp, out)
    assert len(left) == 7, left  # each killed run's three, the forged one, the link to the victim's staging
    sandbox.touched()
    for command in (("rules",), ("diagnose", "--static", str(SAMPLE)), ("repair", str(SAMPLE), "-o",
                                                                      str(out / "out.onnx")),
                    ("set-shape", str(SAMPLE), "--shape", "features=1x32x16", "--shape", "padding_mask=1x32", "-o",
                     str(out / "s.onnx"))):
        assert sandbox.run(*command).returncode in (0, 1)  # 1: the sample has findings
        assert graphfix_folders(sandbox.tmp, out) == left
    assert (forged / "committed-file.txt").read_text() == "the user's own\n"
    assert (out / victim.name).is_symlink() and sandbox.touched() == []


# A child killed while staging, as the `graphfix` command forks it (a fresh process: forking is safe there), run
# inside the parent's `sweeping` block; prints the crashed child's pid. Each folder it makes it announces as
# graphfix's own `staging._make` does (`forked.made`, right after `mkdtemp`); one named with its pid it does not
# announce (a container beside this one whose child has the same pid made it).
CRASH_WHILE_STAGING = """
import os, signal, sys, tempfile
from pathlib import Path
from graphfix.cli.guarded import sweeping
from graphfix.core import forked
from graphfix.io import staging
out = Path(sys.argv[1])

def made(**where):
    folder = tempfile.mkdtemp(**where)
    forked.made(folder)
    return Path(folder)

def crash_while_staging():
    prefix = f".o.onnx.{staging.scratch_name()}"
    made(prefix=prefix, suffix=".tmp", dir=out)  # killed before its marker
    half = made(prefix=prefix, suffix=".tmp", dir=out)
    (half / staging.MARKER).write_text(f"graphfix staging {os.getpid()}")  # killed while writing it
    staged = made(prefix=prefix, suffix=".tmp", dir=out)
    (staged / staging.MARKER).write_text(f"graphfix staging {os.getpid()} {staged.name.split('-')[-1][:-4]}\\n")
    (staged / "o.onnx").write_bytes(b"half a model")  # marked: its own staging, whatever it holds
    data = made(prefix=prefix, suffix=".tmp", dir=out)
    (data / "weights.bin").write_bytes(b"user data?")  # unmarked, and holds more than a marker: kept
    made(prefix=staging.scratch_name("sim"))  # in the temp folder
    neighbour = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=out))  # named alike, not announced
    (neighbour / staging.MARKER).write_text(f"graphfix staging {os.getpid()} {neighbour.name.split('-')[-1][:-4]}\\n")
    os.kill(os.getpid(), signal.SIGKILL)

forked.enable()
assert forked.can_fork()
try:
    with sweeping():
        forked.run_forked(crash_while_staging, "m.onnx")
except forked.Crashed as crashed:
    print(crashed.pid)
"""


def test_a_crashed_child_s_folders_go_and_nothing_else(sandbox):
    """The parent that saw its child crash removes the folders the child said it made: marked (a staged model) or
    holding nothing or a half-written marker. One holding anything else stays, and so does a folder named and
    marked like the child's that it did not announce (a neighbour container's child of the same pid: review 36
    saw a parent delete a live one), and another dead run's."""
    out = sandbox.root / "out"
    out.mkdir()
    other = out / f".o.onnx.graphfix-{dead_pid()}-abcdefgh.tmp"  # another dead run's: never graphfix's to remove
    other.mkdir()
    done = subprocess.run([sys.executable, "-c", CRASH_WHILE_STAGING, str(out)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TMPDIR": str(sandbox.tmp)})
    assert done.returncode == 0 and done.stdout.strip().isdigit(), done.stderr
    left = graphfix_folders(sandbox.tmp, out)
    assert len(left) == 3 and other.name in left, left
    kept = sorted(sorted(p.name for p in (out / name).iterdir()) for name in left if name != other.name)
    assert kept == [[".graphfix-staging"], ["weights.bin"]], kept  # the neighbour's, and the unmarked data


# A child stopped while it runs no Python (inside one onnxruntime call: SIGTERM held), as `--timeout`, Ctrl-C or
# SIGTERM to graphfix stop it: its grace runs out and it is SIGKILLed with its scratch and staging folders made.
# A neighbour's folder named like the child's, not announced, stays. Prints the child's pid.
KILLED_WHILE_NATIVE = """
import os, signal, sys, tempfile, time
from pathlib import Path
from graphfix.core import forked
from graphfix.io import staging
out = Path(sys.argv[1])

def blocked_in_native_code():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # as a long C call: no handler runs
    staging.scratch_dir().__enter__()
    staged = staging.staging_dir(out / "r.onnx")
    (staged / "r.onnx").write_bytes(b"half a model")
    neighbour = Path(tempfile.mkdtemp(prefix=f".r.onnx.{staging.scratch_name()}", suffix=".tmp", dir=out))
    (neighbour / staging.MARKER).write_text(f"graphfix staging {os.getpid()} {neighbour.name.split('-')[-1][:-4]}\\n")
    (out / "ready").write_text("")
    time.sleep(600)

forked.enable()
child = forked.Forked(blocked_in_native_code, "m.onnx")
for _ in range(6000):  # a hang guard, not a timing: the child says when its folders are made
    if (out / "ready").exists():
        break
    time.sleep(0.01)
child.kill(grace_s=0.2)
print(sorted(p.name for p in Path(tempfile.gettempdir()).iterdir() if "graphfix" in p.name))
"""


def test_a_child_killed_after_its_grace_leaves_no_folder(sandbox):
    """The parent SIGKILLs a child that did not stop within its grace, then removes the folders the child said it
    made (scratch in the temp folder, staging beside the output with a half-written model); a neighbour's folder
    of the same name pattern, which the child did not announce, stays."""
    out = sandbox.root / "out"
    out.mkdir()
    done = subprocess.run([sys.executable, "-c", KILLED_WHILE_NATIVE, str(out)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TMPDIR": str(sandbox.tmp)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
    left = graphfix_folders(sandbox.tmp, out)
    assert len(left) == 1 and (out / left[0] / "r.onnx").exists() is False, left  # the neighbour's only
