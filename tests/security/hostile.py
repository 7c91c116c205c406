"""Hostile-input kit: a sandbox with an `outside` folder that no command may touch, and graphfix run as a user would.

`sandbox.run(*args)` runs `python -m graphfix` in a fresh process (cwd `sandbox.cwd`, TMPDIR `sandbox.tmp`);
`sandbox.touched()` lists what the kernel saw opened, written, created, moved or deleted under `outside/`
(inotify: onnxruntime's C++ reads too) since the sandbox was made or last asked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from fuzz_opened import CHANGES, READS, OpenWatch

SECRET = b"secret outside the model's folder\n"


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.model_dir, self.outside, self.cwd, self.tmp = (root / n for n in ("model", "outside", "cwd", "tmp"))
        for folder in (self.model_dir, self.outside, self.cwd, self.tmp):
            folder.mkdir(parents=True)
        (self.outside / "secret.bin").write_bytes(SECRET)
        self._watch = OpenWatch([str(self.outside), str(self.outside / "secret.bin")], READS | CHANGES)

    def run(self, *args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess:
        environment = {**os.environ, "TMPDIR": str(self.tmp), "OMP_NUM_THREADS": "1", **(env or {})}
        return subprocess.run([sys.executable, "-m", "graphfix", *args], cwd=cwd or self.cwd, env=environment,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def touched(self) -> list[str]:
        return sorted({path for path, _ in self._watch.masked_events()})

    def close(self) -> None:
        self._watch.close()
