"""The samples' READMEs are executable documentation: every ```bash block runs, in order, in a copy of the
sample folder, and must exit as declared (```bash exit=1 for the failure shown before a repair)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
BLOCK = re.compile(r"^```bash(?P<info>[^\n]*)\n(?P<body>.*?)^```", re.M | re.S)


def bash_blocks(readme: Path) -> list[tuple[str, int]]:
    blocks = []
    for match in BLOCK.finditer(readme.read_text()):
        exit_code = re.search(r"exit=(\d+)", match["info"])
        blocks.append((match["body"], int(exit_code[1]) if exit_code else 0))
    return blocks


READMES = sorted(SAMPLES.glob("*/README.md"))


@pytest.mark.slow
@pytest.mark.parametrize("readme", READMES, ids=[r.parent.name for r in READMES])
def test_sample_readme_commands(readme, tmp_path):
    blocks = bash_blocks(readme)
    assert blocks, f"{readme} shows no ```bash commands"
    shutil.copy(SAMPLES / "run_ort.py", tmp_path / "run_ort.py")
    work = tmp_path / readme.parent.name
    shutil.copytree(readme.parent, work)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for body, expected in blocks:
        proc = subprocess.run(["bash", "-c", "set -e\n" + body], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == expected, f"{readme.parent.name}: `{body.strip()}` exited {proc.returncode}:\n" \
            f"{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr
