"""Names printed as text (#20 item 12): a node name, a message quoting it or a file name cannot start a line of
its own (a CI log command), send a terminal escape or reorder text (bidi override); JSON and SARIF escape them."""

from __future__ import annotations

import json

import onnx
import onnx.parser
import pytest

HOSTILE = "Relu_0\n::error file=x.py::forged\n::add-mask::secret\x1b[2J\u202e"
# a constant output (GF001 error, quoting the node) beside an unused input (GF001 warning, quoting the input)
TRUNCATED = ('< ir_version: 8, opset_import: ["" : 17] > '
             "g (float[N, 4] x) => (float[1] y) { y = Constant <value = float[1] {1.0}> () }")


def hostile_model(folder, file_name="m.onnx"):
    model = onnx.parser.parse_model(TRUNCATED)
    model.graph.node[0].name = HOSTILE
    model.graph.input[0].name = HOSTILE
    onnx.save(model, folder / file_name)
    return folder / file_name


def no_raw_controls(text: str) -> None:
    for line in text.splitlines():
        assert not line.startswith("::"), line
        assert all(c.isprintable() or c == "\x1b" for c in line), repr(line)
    assert "\x1b[2J" not in text and "\u202e" not in text


@pytest.mark.parametrize("command", [["check", "--fail-on", "warning"], ["diagnose", "--static", "--show-rejected"],
                                     ["repair", "--dry-run", "--no-simplify"]])
def test_text_output_escapes_names(sandbox, command):
    hostile_model(sandbox.cwd)
    done = sandbox.run(*command, "m.onnx")
    assert done.returncode in (1, 2), done.stderr
    assert "::error file=x.py::forged" in done.stdout + done.stderr  # the name is shown, escaped, on its line
    no_raw_controls(done.stdout)
    no_raw_controls(done.stderr)


def test_a_hostile_file_name_in_an_error_is_escaped(sandbox):
    (sandbox.cwd / "bad\n::error::x.onnx").write_bytes(b"not a model")
    done = sandbox.run("check", "bad\n::error::x.onnx")
    assert done.returncode == 2
    no_raw_controls(done.stdout)
    no_raw_controls(done.stderr)


FORGED = "::error file=README.md,line=1::forged.onnx"  # a file name is printable: only where it stands can harm


@pytest.mark.parametrize("command", [["check"], ["diagnose", "--static"], ["repair", "--dry-run", "--no-simplify"],
                                     ["diagnose", "--"], ["bench", "--runs", "1", "--warmup", "0"]])
def test_a_file_name_never_starts_a_line_as_a_ci_command(sandbox, command):
    """Security review 148: each model's line starts with its path, and a committed file named `::error ...` was
    a command to GitHub Actions' log reader. A relative path starting with a colon is shown as `./...` (bench's
    table row too, red team 151)."""
    name = FORGED if command[0] != "bench" else "::warning::x.onnx"  # bench cuts names past 32 characters
    hostile_model(sandbox.cwd, name)
    done = sandbox.run(*command, name)
    assert done.returncode in ((0,) if command[0] == "bench" else (1, 2)), done.stderr
    assert "./" + name in done.stdout + done.stderr
    no_raw_controls(done.stdout)
    no_raw_controls(done.stderr)


@pytest.mark.parametrize("fmt", ["json", "sarif"])
def test_json_and_sarif_keep_names_exact_and_escaped(sandbox, fmt):
    hostile_model(sandbox.cwd)
    done = sandbox.run("check", "m.onnx", "--format", fmt)
    assert done.returncode == 1, done.stderr
    assert done.stdout.isascii() and "\n::" not in done.stdout
    assert any(HOSTILE in text for text in strings(json.loads(done.stdout)))  # nothing lost


def strings(doc):
    if isinstance(doc, str):
        yield doc
    for item in doc.values() if isinstance(doc, dict) else doc if isinstance(doc, list) else ():
        yield from strings(item)


def test_bench_and_explain_escape_what_they_echo(sandbox):
    """`bench` prints each model's file name in its table, and `explain` the text it did not recognise (a pasted
    onnxruntime message quotes the model's node names): escaped like every other command's (helper 58)."""
    name = "a\x1b]0;PWNED\x07\u202e.onnx"
    hostile_model(sandbox.cwd, name)
    done = sandbox.run("bench", name, "--runs", "1", "--warmup", "0")
    assert done.returncode == 0, done.stderr
    no_raw_controls(done.stdout + done.stderr)
    assert "\x07" not in done.stdout + done.stderr and "\x1b" not in done.stdout + done.stderr
    done = sandbox.run("explain", HOSTILE)
    assert done.returncode == 1
    no_raw_controls(done.stdout)
    no_raw_controls(done.stderr)
