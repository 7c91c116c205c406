"""Issue #20 item 2: no child interpreter graphfix starts imports a module planted in the working folder.

graphfix runs here as its installed command (`graphfix`, whose own path starts with its bin folder, as a user and
pre-commit run it), not `python -m graphfix`, which puts the working folder first in graphfix's own process too.
The planted modules write a marker under `outside/` when imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import onnx.parser
import pytest

PLANTED = ("onnxsim.py", "onnx.py", "multiprocessing/__init__.py", "graphfix/__init__.py", "numpy.py")


def plant(folder: Path, outside: Path) -> None:
    for index, name in enumerate(PLANTED):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"open({str(outside / f'imported-{index}')!r}, 'w').write({name!r})\n")


def run_installed(sandbox, *args: str) -> subprocess.CompletedProcess:
    """`graphfix ARGS` as installed beside this interpreter, in the sandbox's working and temp folders."""
    command = Path(sys.executable).parent / "graphfix"
    environment = {**os.environ, "TMPDIR": str(sandbox.tmp), "OMP_NUM_THREADS": "1"}
    environment.pop("PYTHONSAFEPATH", None)
    return subprocess.run([str(command), *args], cwd=sandbox.cwd, env=environment, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


REPAIRABLE = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] X) => (float[N, 4] Y) <float[4] B = {1.0, 2.0, 3.0, 4.0}> { T = Add(B, B)  Y = Add(X, T)  D = Neg(X) }"""


def foldable(path: Path) -> None:
    """A model graphfix repairs (a dead node) and onnxsim then simplifies (a constant Add to fold)."""
    onnx.save(onnx.parser.parse_model(REPAIRABLE), path)


def imported(sandbox) -> list[str]:
    return sorted(p.read_text() for p in sandbox.outside.glob("imported-*"))


def test_onnxsim_child_ignores_modules_in_the_working_folder(sandbox):
    foldable(sandbox.model_dir / "m.onnx")
    plant(sandbox.cwd, sandbox.outside)
    done = run_installed(sandbox, "repair", str(sandbox.model_dir / "m.onnx"), "-o", str(sandbox.model_dir / "o.onnx"))
    assert imported(sandbox) == []
    assert done.returncode == 0, done.stderr
    assert "simplify: simplified with onnxsim" in done.stdout, done.stdout
    assert [n.op_type for n in onnx.load(sandbox.model_dir / "o.onnx").graph.node] == ["Add"]


@pytest.mark.parametrize("debug", [[], ["--debug"]], ids=["forked", "spawned"])  # --debug: a spawned pool
def test_check_workers_ignore_modules_in_the_working_folder(sandbox, debug):
    for name in ("a.onnx", "b.onnx"):
        foldable(sandbox.model_dir / name)
    plant(sandbox.cwd, sandbox.outside)
    done = run_installed(sandbox, *debug, "check", "--jobs", "2", str(sandbox.model_dir / "a.onnx"),
                         str(sandbox.model_dir / "b.onnx"))
    assert imported(sandbox) == []
    assert done.returncode == 0, done.stderr
    assert "2 models, 0 failed, 0 unreadable" in done.stdout
