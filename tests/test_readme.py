"""The README's Python examples (```python run blocks) run as written: executable documentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"^```python run\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block(index, monkeypatch):
    code = BLOCKS[index]
    if "import torch" in code:
        pytest.importorskip("torch")
    monkeypatch.chdir(ROOT)
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})


# The bash blocks after the opening two (install, run the tests: CI runs those itself), in README order: later
# blocks read what earlier ones wrote (/tmp/hubert_frozen.onnx). A block documents its exit status in the
# sentence after it ("... exits 1"); otherwise it must succeed.
_TEXT = (ROOT / "README.md").read_text()
BASH = [(m.group(1), _TEXT[m.end():m.end() + 200]) for m in re.finditer(r"^```bash\n(.*?)^```\n", _TEXT, re.M | re.S)]


@pytest.mark.slow
def test_readme_bash_blocks_run_as_written(tmp_path):
    import os
    import subprocess
    import sys

    assert len(BASH) > 2, "the README lost its command examples"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for block, after in BASH[2:]:
        expected = 1 if re.search(r"exits 1\b", after) else 0
        done = subprocess.run(["bash", "-c", f"set -e\n{block}"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
        output = done.stdout + done.stderr
        assert done.returncode == expected, f"{block}\nexit {done.returncode}, expected {expected}:\n{output[-2000:]}"
        assert "Traceback" not in output, output[-2000:]
