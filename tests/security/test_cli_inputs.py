"""Inputs the probe synthesizes (#20 item 15): when graphfix cannot make or pass the values (bfloat16, float8) the
model is reported as not run, never as failing; a dim declared 0 is an empty tensor, as declared."""

from __future__ import annotations

import json

import onnx
import onnx.parser
import pytest

HEADER = '< ir_version: 10, opset_import: ["" : 21] > '


@pytest.mark.parametrize(
    ("graph", "names"),
    [
        ("g (bfloat16[N, 4] x) => (float[N, 4] y) { y = Cast <to = 1> (x) }", ["probe-skipped"]),
        ("g (float8e4m3fn[N, 4] x) => (float[N, 4] y) { y = Cast <to = 1> (x) }", ["probe-skipped"]),
        ("g (float[0, 4] x) => (float[0, 4] y) { y = Relu(x) }", ["suspicious-output"]),
        ("g (float[N, 0] x, float[N, 3] z) => (float[N, 0] y, float[N, 3] w) { y = Relu(x)\n w = Relu(z) }",
         ["suspicious-output"]),
    ],
)
def test_synthesized_inputs_are_not_blamed_on_the_model(sandbox, graph, names):
    onnx.save(onnx.parser.parse_model(HEADER + graph), sandbox.cwd / "m.onnx")
    done = sandbox.run("check", "m.onnx", "--isolated", "--format", "json")
    findings = json.loads(done.stdout)["models"][0]["findings"]
    assert [f["name"] for f in findings] == names, findings
    assert "runtime-failure" not in done.stdout
