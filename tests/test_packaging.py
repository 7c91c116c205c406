"""The built wheel carries the rules: install it into a fresh virtualenv and list them."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_every_builtin_rule(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("graphfix-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    own = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a checkout on the path is no install
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel), "-c", str(ROOT / "constraints.txt")],
                   check=True, capture_output=True, timeout=600, env=own)
    listed = subprocess.run([str(env_dir / "bin" / "graphfix"), "rules", "--format", "json"], cwd=tmp_path,
                            check=True, capture_output=True, text=True, timeout=120, env=own).stdout
    import json

    from graphfix.core.registry import load_rules

    expected = [rule.code for rule in load_rules()[0]]
    rows = json.loads(listed)["rules"]
    assert [row["code"] for row in rows] == expected
    assert all(row["name"] != "internal-error" for row in rows)
