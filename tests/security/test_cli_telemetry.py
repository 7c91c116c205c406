"""onnxruntime's telemetry (#20 item 15): graphfix runs models, onnxruntime 1.29+ would keep a record of each one
(model and node names) under ~/.cache and a session id in $TMPDIR; graphfix turns it off, so nothing is written."""

from __future__ import annotations

import os
import subprocess
import sys

import onnx
import onnx.parser

HEALTHY = '< ir_version: 8, opset_import: ["" : 17] > g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }'


def test_running_a_model_leaves_no_telemetry_in_home_or_the_temp_folder(sandbox):
    home = sandbox.root / "home"
    home.mkdir()
    model = onnx.parser.parse_model(HEALTHY)
    model.graph.node[0].name = "confidential_layer"
    onnx.save(model, sandbox.cwd / "m.onnx")
    # without the variables that turn onnxruntime's telemetry off by themselves (a CI runner sets CI)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ORT_DISABLE_TELEMETRY", "ORT_RUNNING_UNIT_TESTS")}
    env.update(HOME=str(home), TMPDIR=str(sandbox.tmp), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "graphfix", "check", "m.onnx", "--isolated"], cwd=sandbox.cwd,
                          env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert [p.relative_to(sandbox.root).as_posix() for p in (*home.rglob("*"), *sandbox.tmp.rglob("*"))] == []
