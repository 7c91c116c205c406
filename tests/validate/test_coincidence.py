"""Probe sizes without coincidences: a dynamic dim is 1 only in the batch-1 binding, differs from every other dynamic
dim and from every static size it may meet; a binding that has one earns no evidence level (that it is still
compared: test_evidence's key-padding test, test_validate_compare's identical models)."""

from conftest import parse

from graphfix.validate import ValidationOptions
from graphfix.validate.inputs import probe_sizes
from graphfix.validate.sizes import coincidence

MASKED = parse("""<ir_version: 10, opset_import: ["" : 17]>
g (float[B, T, 32] x, bool[B, T] pad) => (float[B, T, 32] y) <float zero = {0.0}> {
    y = Where(pad, zero, x)
}""")  # h[pad] = 0 as exported: runs only where T is 32 (or 1), by coincidence


def test_no_probe_size_lines_a_dim_up_with_another_or_with_a_static_size():
    for trace in ({}, {"T": 2}, {"T": 7}, {"T": 32}):
        bindings = probe_sizes(MASKED, ValidationOptions(trace_sizes=trace, num_sizes=5))
        for index, binding in enumerate(bindings[1:], start=1):
            assert binding["T"] != 32 and binding["T"] > 1, (trace, binding)
            assert binding["B"] != binding["T"], (trace, binding)
            assert binding["B"] > 1 or index == 1, (trace, binding)  # 1 only in the batch-1 binding


def test_coincidences_are_named():
    probed = {"B", "T"}
    assert coincidence(MASKED, {"B": 1, "T": 7}, probed) == "B = 1"
    assert coincidence(MASKED, {"B": 7, "T": 7}, probed) == "B = T = 7"
    assert "T = 32, a static size" in coincidence(MASKED, {"B": 3, "T": 32}, probed)
    assert coincidence(MASKED, {"B": 3, "T": 32}, probed, export={"B": 2, "T": 32}) == ""  # its export size
    assert coincidence(MASKED, {"B": 3, "T": 7}, probed) == ""

