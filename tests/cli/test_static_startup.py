"""`graphfix diagnose --static` imports no runtime (issue 23): neither onnxruntime nor onnxsim, whatever the graph,
and sympy only when the size analysis' screen cannot settle the graph without it (a constraint to solve, or sizes
its exact arithmetic does not decide) or a rule needs the shapes themselves.

Each case runs the command in a fresh interpreter (`python -c`) and reads that interpreter's `sys.modules` once the
command is done; `--debug` keeps the model's work in that process (the command otherwise forks a child for it).
What is measured is which modules were imported, never how long it took.
"""

from __future__ import annotations

import json
import subprocess
import sys

import onnx

HEAVY = ("onnxruntime", "onnxsim", "torch", "sympy", "graphfix.validate", "graphfix.pipeline.repair")
PROBE = """
import json, sys
from graphfix.cli import main
sys.argv = ["graphfix", "--debug", "diagnose", "--static", sys.argv[1]]
try:
    main()
except SystemExit as exc:
    code = exc.code
print(json.dumps({"exit": code, "loaded": [m for m in HEAVY if m in sys.modules]}))
""".replace("HEAVY", repr(HEAVY))

RELU_CHAIN = """< ir_version: 10, opset_import: ["" : 17] >
g (float[B, T, 8] x) => (float[B, T, 8] y) { a = Relu(x)  y = Neg(a) }"""

# a Reshape whose shape vector is computed from the input's: the size analysis checks its element count
RESHAPE = """< ir_version: 10, opset_import: ["" : 17] >
g (float[B, T, 8] x) => (float[B, T, 2, 4] y) {
    s = Shape(x)
    bt = Slice(s, start, end)
    shape = Concat<axis = 0>(bt, tail)
    y = Reshape(x, shape)
}"""


def loaded_after_static_diagnose(tmp_path, text: str, tail: tuple[int, ...] = ()) -> dict:
    """With `tail`, the Reshape keeps the input's first 4 - len(tail) dims and appends `tail`."""
    model = onnx.parser.parse_model(text)
    if tail:
        model.graph.initializer.extend([onnx.helper.make_tensor("start", onnx.TensorProto.INT64, [1], [0]),
                                        onnx.helper.make_tensor("end", onnx.TensorProto.INT64, [1], [4 - len(tail)]),
                                        onnx.helper.make_tensor("tail", onnx.TensorProto.INT64, [len(tail)], tail)])
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    run = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_no_candidate_imports_neither_a_runtime_nor_sympy(tmp_path):
    result = loaded_after_static_diagnose(tmp_path, RELU_CHAIN)
    assert result["exit"] == 0
    assert result["loaded"] == []


def test_a_size_analysis_the_screen_settles_imports_no_sympy(tmp_path):
    result = loaded_after_static_diagnose(tmp_path, RESHAPE, tail=(2, 4))
    assert result["exit"] == 0
    assert result["loaded"] == []  # the Reshape is a candidate, and its element count holds at every size


# BERT's embeddings and heads as the TorchScript exporter writes them: a Reshape's -1 entry, a quotient of sizes,
# met by a constant in a broadcast, and a constant buffer expanded to a constant target
HEADS_AND_BUFFER = """< ir_version: 10, opset_import: ["" : 17] >
g (float[B, T, 8] x) => (float[B, T, 2, 4] y) {
    r = Reshape(x, shape)
    e = Expand(buf, target)
    y = Add(r, e)
}"""


def test_a_healthy_bert_like_graph_imports_no_sympy(tmp_path):
    model = onnx.parser.parse_model(HEADS_AND_BUFFER)
    model.graph.initializer.extend([onnx.helper.make_tensor("shape", onnx.TensorProto.INT64, [4], [0, 0, 2, -1]),
                                    onnx.helper.make_tensor("buf", onnx.TensorProto.FLOAT, [2, 4], [0.5] * 8),
                                    onnx.helper.make_tensor("target", onnx.TensorProto.INT64, [2], [1, 1])])
    path = tmp_path / "bert_like.onnx"
    onnx.save(model, path)
    run = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"exit": 0, "loaded": []}, run.stderr


def test_a_constraint_to_solve_imports_sympy_and_still_no_runtime(tmp_path):
    result = loaded_after_static_diagnose(tmp_path, RESHAPE.replace("float[B, T, 2, 4] y", "float[B, 7, 2, 4] y"),
                                          tail=(7, 2, 4))
    assert result["exit"] == 1  # T = 7 baked: found
    assert result["loaded"] == ["sympy"]  # the size analysis solved it, and only it imports


def test_repair_leaves_sympy_to_its_forked_worker():
    """The repair command's own imports leave sympy out: its forked worker loads it on first use, where the size
    analysis' screen cannot settle the graph (a healthy BERT-base never does). It once loaded it on a thread while
    the model was read: on two cores that cost the healthy BERT-base 0.18 s (1.33 s against 1.15 s, farm-bench)
    and saved the padded one nothing (2.60 s against 2.55 s), the import holding the interpreter from the parse."""
    probe = "import sys, graphfix.cli.repair; print('sympy' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "False", run.stdout + run.stderr
