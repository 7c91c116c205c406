"""Child interpreters that import nothing from the working folder (issue #20).

`python -m pkg` and `python -c ...` put the working folder first on the child's `sys.path`, so an `onnxsim.py` or a
`multiprocessing/` package planted in the folder graphfix runs in (a repository under review) would be imported
instead of the library. Every child graphfix starts runs in safe-path mode (`-P`, Python 3.11): its path holds the
standard library, PYTHONPATH and the installed packages, never the working folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def python_module_argv(module: str, *args: str) -> list[str]:
    """argv that runs `python -m module args...` in safe-path mode."""
    return [sys.executable, "-P", "-m", module, *args]


def child_environment() -> dict[str, str]:
    """The environment for such a child: this one, with graphfix's own folder added to PYTHONPATH where the
    working folder is the only place graphfix came from (`python -m graphfix` in a source checkout), so that the
    child still finds graphfix. That folder then is trusted as much as this process trusts it; no other is."""
    environment = dict(os.environ)
    root = Path(__file__).resolve().parents[2]  # the folder that holds graphfix/ (this is graphfix/core/)
    if root == Path.cwd().resolve() and not _installed_elsewhere(root):
        environment["PYTHONPATH"] = os.pathsep.join(p for p in (environment.get("PYTHONPATH"), str(root)) if p)
    return environment


def _installed_elsewhere(root: Path) -> bool:
    """Whether an entry of sys.path other than the working folder provides graphfix (installed, editable)."""
    import importlib.machinery

    others = [p for p in sys.path if p and Path(p).resolve() != root]
    return importlib.machinery.PathFinder.find_spec("graphfix", others) is not None
