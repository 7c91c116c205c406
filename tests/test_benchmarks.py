"""benchmarks/run.py, in its tiny mode (toy models, one run of each tool), writes every row of issue 23's table
with its figures. What is checked is that the figures are there, never their values: the benchmark measures, the
README quotes it, and no unit test times anything."""

from __future__ import annotations

import json
import numbers
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxsim")
pytestmark = pytest.mark.slow  # about 30 s on 2 cores: 10 processes, and toy BERTs exported with torch

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
ROWS = ["static-llama", "repair-bert-pad", "repair-bert", "repair-llama"]


def test_tiny_run_writes_every_row_with_numbers(tmp_path):
    out = tmp_path / "results.json"
    run = subprocess.run([sys.executable, str(RUN), "--tiny", "--repeat", "1", "--work", str(tmp_path / "work"),
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(out.read_text())
    assert [row["row"] for row in results["rows"]] == ROWS
    for row in results["rows"]:
        for tool in [row["graphfix"], *row["peers"]]:
            assert tool["exit"] == 0, (row["row"], tool)
            assert isinstance(tool["seconds"], numbers.Real) and tool["seconds"] > 0, (row["row"], tool)
            assert isinstance(tool["peak_mib"], numbers.Real) and tool["peak_mib"] > 0, (row["row"], tool)
        assert isinstance(row["time_ratio"], numbers.Real) and isinstance(row["memory_ratio"], numbers.Real)
        assert row["goals"] and all(isinstance(g["value"], numbers.Real) for g in row["goals"]), row["goals"]
    by_name = {row["row"]: row for row in results["rows"]}
    floor = by_name["static-llama"]["floor"]  # `import onnx` alone, which graphfix and the checker both pay
    assert floor["exit"] == 0 and isinstance(floor["time_ratio"], numbers.Real), floor
    assert by_name["repair-bert-pad"]["matches_pytorch"], by_name["repair-bert-pad"]["pytorch_check"]
    assert isinstance(by_name["repair-llama"]["memory_per_weights"], numbers.Real)
    assert row["row"] in run.stdout  # the table is printed too
