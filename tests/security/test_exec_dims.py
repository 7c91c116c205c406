"""Issue #20 item 1: model text (dim names, attributes, string tensors) is never evaluated as Python.

Each payload writes a marker file under `outside/` when something runs it; every command that reached one on the
landed main (diagnose, check, check --jobs 2, repair --dry-run, repair -o, set-shape, diagnose --static) runs here
over the models, and the marker must never appear.
"""

from __future__ import annotations

import threading

import onnx
import onnx_graphsurgeon as gs
import pytest
import sympy
from exec_payloads import BUILDERS, custom_attribute, payload, string_tensor

from graphfix.analysis.shapes import symbolic_inference
from graphfix.analysis.sizes import Sizes
from graphfix.core.nocode import CodeFromText, no_code_from_text
from graphfix.validate.compare import evaluate_dim


@pytest.mark.parametrize(("dim", "sizes", "value"), [
    ("2*N*T", {"N": 2, "T": 3}, 12),
    ("floor(T/2) + 1", {"T": 7}, 4),
    ("ceiling(T/4)", {"T": 7}, 2),
    ("Min(512, S)", {"S": 600}, 512),
    ("Max(1, N - 3)", {"N": 2}, 1),
    ("Mod(N, 4) + N//4", {"N": 11}, 5),
    ("-N + (10 % 4)", {"N": 1}, 1),
    ("N/2", {"N": 3}, None),  # not a whole number
    ("N + unk__0", {"N": 3}, None),  # a name no input binds
    ("N**2", {"N": 3}, None),  # outside the grammar
    ("N.real", {"N": 3}, None),
    ("abs(N)", {"N": 3}, None),
    ("1.5*N", {"N": 2}, None),
    ("N // 0", {"N": 2}, None),
    ("(" * 300 + "N" + ")" * 300, {"N": 2}, None),  # deeper than the grammar allows
    ("N+" * 600 + "1", {"N": 1}, None),  # longer than any dim shape inference writes
])
def test_dims_are_evaluated_by_graphfix_grammar(dim, sizes, value):
    assert evaluate_dim(dim, sizes) == value


def test_a_dim_that_is_python_is_undecided_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    assert evaluate_dim(payload(marker), {"N": 2}) is None
    assert evaluate_dim(f"N + {payload(marker)}", {"N": 2}) is None
    assert not marker.exists()


def test_the_size_pass_skips_a_node_whose_attribute_is_text(tmp_path):
    marker = tmp_path / "ran"
    graph = gs.import_onnx(custom_attribute(marker))
    sizes = Sizes(graph, lambda tensor: None)
    unsqueeze = next(node for node in graph.nodes if node.op == "Unsqueeze")
    assert sizes.shape(unsqueeze.outputs[0]) is None  # the node is skipped, the rest of the graph is sized
    assert sizes.shape(graph.inputs[0]) == (sympy.Symbol("N", integer=True, positive=True), 4)
    assert not marker.exists()


def test_symbolic_shape_inference_cannot_run_a_string_tensor(tmp_path):
    marker = tmp_path / "ran"
    result = symbolic_inference(string_tensor(marker))
    assert not marker.exists()
    assert any("refused" in note for note in result.incomplete), result.incomplete


def test_the_guard_refuses_text_in_its_thread_only():
    with no_code_from_text():
        with pytest.raises(CodeFromText):
            sympy.sympify("T + 1")
        elsewhere = []
        worker = threading.Thread(target=lambda: elsewhere.append(sympy.sympify("T + 1")))
        worker.start()
        worker.join()
        assert elsewhere == [sympy.Symbol("T") + 1]
        assert onnx.helper.make_tensor_value_info("x", 1, [1]).name == "x"  # compiled code still runs
    assert sympy.sympify("T + 1") == sympy.Symbol("T") + 1


def test_a_traceback_printed_inside_the_guard_is_not_refused():
    """traceback's caret anchors parse a source line (pytest prints an exception a garbage collector's callback
    dropped this way); an `ast.parse` of text from anywhere else is still refused."""
    import ast
    import traceback

    try:
        {"key": 1}["other"] + len([])  # a line with sub-expressions: Python 3.11 anchors the caret with ast.parse
    except KeyError as error:
        caught = error
    with no_code_from_text():
        assert "KeyError" in "".join(traceback.format_exception(caught))
        with pytest.raises(CodeFromText):
            ast.parse("__import__('os')")


CONV_SLICE = """
< ir_version: 8, opset_import: ["" : 17] >
g (float[B, 1, T] x) => (float[B, 4, ?] y) {
    w = Constant <value = float[4, 1, 76] {WEIGHTS}> ()
    h = Conv <kernel_shape = [76]> (x, w)
    starts = Constant <value = int64[1] {0}> ()
    ends = Constant <value = int64[1] {64}> ()
    axes = Constant <value = int64[1] {2}> ()
    y = Slice(h, starts, ends, axes)
}
""".replace("WEIGHTS", ", ".join(["0.01"] * 304))


def test_sympys_own_code_inside_the_guard_is_not_model_text(tmp_path):
    """onnxruntime's inference simplifies the Slice's length: sympy imports its units on first use (their module
    sympifies its own unit names) and writes a polynomial ring's arithmetic with `exec` (from its templates and a
    count of symbols). Refused, a fresh process lost every shape inferred there, while a process that had done
    either before kept them (helper 97): a fresh interpreter, as the CLI is, infers the Slice."""
    import subprocess
    import sys

    path = tmp_path / "conv_slice.onnx"
    onnx.save(onnx.parser.parse_model(CONV_SLICE), str(path))
    script = ("import sys, onnx\n"
              "from graphfix.analysis.shapes import skeleton, symbolic_inference\n"
              "found = symbolic_inference(skeleton(onnx.load(sys.argv[1])))\n"
              "print(sorted(found.value_info), found.incomplete)\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "'h'" in done.stdout and "[]" in done.stdout.split("] ")[-1], done.stdout


HEALTHY = "relu.onnx"
COMMANDS = {  # command -> payload models it runs over (those it reached on the landed main, where one model)
    "diagnose": (["diagnose"], list(BUILDERS)),
    "diagnose --static": (["diagnose", "--static"], list(BUILDERS)),
    "check": (["check"], list(BUILDERS)),
    "check --jobs 2": (["check", "--jobs", "2", HEALTHY], list(BUILDERS)),
    "repair --dry-run": (["repair", "--dry-run"], list(BUILDERS)),
    "repair -o declared": (["repair", "-o", "out.onnx"], ["declared_output_dim"]),
    "repair -o attribute": (["repair", "-o", "out.onnx"], ["custom_attribute"]),
    "set-shape": (["set-shape", "--shape", "X=3x4", "-o", "out.onnx"], ["string_tensor"]),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_no_command_runs_model_text(sandbox, command):
    args, names = COMMANDS[command]
    markers = {name: sandbox.outside / f"ran-{name}" for name in names}
    for name in names:
        onnx.save(BUILDERS[name](markers[name]), sandbox.model_dir / f"{name}.onnx")
    healthy = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["X"], ["Y"])], "g",
        [onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["N", 4])],
        [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["N", 4])]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(healthy, sandbox.model_dir / HEALTHY)
    models = [str(sandbox.model_dir / f"{name}.onnx") for name in names]
    args = [str(sandbox.model_dir / a) if a in (HEALTHY, "out.onnx") else a for a in args]
    done = sandbox.run(args[0], *models, *args[1:])
    assert "Traceback" not in done.stderr, done.stderr
    assert [name for name, marker in markers.items() if marker.exists()] == []
    assert sandbox.touched() == []
