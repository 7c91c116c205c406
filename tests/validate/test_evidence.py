"""Evidence per size: the original as the oracle where it runs (shapes included), batch consistency where it
fails, `runs` where nothing can be compared or where a coincidence may make the original run, and the repairs the
issue found waved through, now rejected where a reference exists."""

from pathlib import Path

import numpy as np
import onnx
from conftest import parse
from onnx import TensorProto, helper, numpy_helper

import graphfix
from graphfix.validate import ValidationOptions, evidence, minimum, validate
from graphfix.validate.runner import ModelRunner

HEADER = '<ir_version: 10, opset_import: ["" : 17]>\n'
HUBERT = Path(__file__).resolve().parents[2] / "samples" / "hubert_padding_mask" / "model.onnx"


def swapped_where(model: onnx.ModelProto) -> onnx.ModelProto:
    wrong = onnx.ModelProto()
    wrong.CopyFrom(model)
    where = next(node for node in wrong.graph.node if node.op_type == "Where")
    where.input[1], where.input[2] = where.input[2], where.input[1]
    return wrong


def test_hubert_repair_has_no_independent_reference_and_says_so():
    """The original runs only where its mask lines up by coincidence (time = 32 features, time = 1): no size is
    a reference. The repair is written on `runs` (SAFE: the graph determines it); the strict gate refuses it. A
    wrong rewrite (the swapped Where) is refused at the default too: with every dim at 1 the original runs, and
    runs right, and the swap differs there (a falsifier, never evidence)."""
    repaired = graphfix.repair(str(HUBERT), simplify=False)
    assert repaired.status == "repaired" and repaired.validation["passed"], repaired.validation["reasons"]
    assert repaired.validation["dims"] == {"batch": "runs", "time": "runs"}
    assert all(32 not in run["sizes"].values() for run in repaired.validation["runs"])
    ones = [run for run in repaired.validation["runs"] if set(run["sizes"].values()) == {1}]
    assert ones and ones[0]["outputs"] and "no evidence here" in ones[0]["note"]
    strict = validate(onnx.load(HUBERT), repaired.model, ValidationOptions(require="consistent"))
    assert not strict.passed and "below the required 'consistent'" in strict.reasons[0]
    swapped = validate(onnx.load(HUBERT), swapped_where(repaired.model), ValidationOptions())
    assert not swapped.passed
    assert "differs from the original at sizes {'batch': 1, 'time': 1}" in swapped.reasons[0]


def test_a_swapped_where_is_rejected_where_the_original_runs():
    original, right = key_padding(None), key_padding([1])
    wrong = swapped_where(right)
    validation = validate(original, wrong, ValidationOptions())
    assert not validation.passed
    assert any("output 'out' differs from the original" in reason for reason in validation.reasons)


HEALTHY_RESHAPE = parse(HEADER + """
g (float[B, 8] x) => (float[2, ?, 4] y) <int64[3] shape = {2, -1, 4}> {
    [reshape] y = Reshape(x, shape)
}""")
BATCH_FIRST = parse(HEADER + """
g (float[B, 8] x) => (float[?, ?, 4] y) <int64[3] shape = {0, -1, 4}> {
    [reshape] y = Reshape(x, shape)
}""")


def test_a_rewrite_of_a_healthy_reshape_is_rejected_where_the_original_runs():
    # [2, -1, 4] runs at every B: the original is the oracle there, shapes included
    validation = validate(HEALTHY_RESHAPE, BATCH_FIRST, ValidationOptions(trace_sizes={"B": 2}))
    assert not validation.passed
    assert any("shape [5, 2, 4] instead of [2, 5, 4]" in reason for reason in validation.reasons)


def key_padding(condition_axes: list[int] | None) -> onnx.ModelProto:
    """Where(mask[B, T], -1e9, scores[B, T, T]); with `condition_axes`, the mask unsqueezed there first."""
    nodes, mask = [], "mask"
    if condition_axes is not None:
        nodes.append(helper.make_node("Unsqueeze", ["mask", "axes"], ["mask3"], name="unsqueeze"))
        mask = "mask3"
    nodes.append(helper.make_node("Where", [mask, "neg", "scores"], ["out"], name="where"))
    inits = [numpy_helper.from_array(np.array(-1e9, np.float32), "neg")]
    if condition_axes is not None:
        inits.append(numpy_helper.from_array(np.array(condition_axes, np.int64), "axes"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("mask", TensorProto.BOOL, ["B", "T"]),
                                           helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", "T", "T"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", "T", "T"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_key_padding_mask_is_right_at_batch_1_so_masking_queries_is_rejected():
    validation = validate(key_padding(None), key_padding([2]), ValidationOptions())
    assert not validation.passed
    # batch 1 earns no level (a coincidence), but it is compared, and the difference there fails
    assert any(run.sizes["B"] == 1 and run.level == "runs" and run.failed for run in validation.runs)


def test_masking_keys_where_the_original_fails_has_no_reference_of_its_own():
    """Where(mask[B, T]) against scores[B, T, T] runs only at B = 1 or B = T: coincidences both, so the original's
    samples cannot be shown independent at its export size (it fails there) and no size away from it counts."""
    right = validate(key_padding(None), key_padding([1]), ValidationOptions())
    assert right.passed, right.reasons
    assert right.dims == {"B": "runs", "T": "runs"}
    assert all(not run.failed for run in right.runs)
    assert not validate(key_padding(None), key_padding([1]), ValidationOptions(require="consistent")).passed


BAKED_SLICE = parse(HEADER + """
g (float[N, 4] x) => (float[N, 4] y) <int64[1] zero = {0}, int64[1] two = {2}> {
    [slice] y = Slice(x, zero, two)
}""")  # x[:2] traced at N=2: at other N it returns its export-time shape [2, 4]


def test_an_output_at_its_export_time_shape_is_compared_on_the_overlap():
    whole = parse(HEADER + "g (float[N, 4] x) => (float[N, 4] y) { [copy] y = Identity(x) }")
    validation = validate(BAKED_SLICE, whole, ValidationOptions(trace_sizes={"N": 2}))
    assert validation.passed, validation.reasons
    assert any("export-time shape" in run.note for run in validation.runs)
    doubled = parse(HEADER + "g (float[N, 4] x) => (float[N, 4] y) { [copy] y = Add(x, x) }")
    assert not validate(BAKED_SLICE, doubled, ValidationOptions(trace_sizes={"N": 2})).passed


TABLE = ", ".join(str(v) for v in np.sin(np.arange(80.0) * 0.37).round(4))
ADDS_TABLE = HEADER + """
g (float[B, T, 4] x) => (float[B, U, 4] y) <float[20, 4] table = {TABLE}, int64[1] zero = {0}, int64[1] one = {1},
                                             int64[1] two = {2}> {
    BODY
}""".replace("TABLE", TABLE)
BAKED_TABLE = parse(ADDS_TABLE.replace("BODY", "y = Add(x, table)"))  # a table of T = 20 rows, folded whole
CUT = "shape = Shape(x)\n    t = Slice(shape, one, two)\n    rows = Slice(table, zero, t)\n    "


def test_an_original_that_spreads_a_length_of_1_against_a_baked_size_is_compared_on_the_overlap():
    """The folded table runs at T = 1 only by broadcasting: its output has 20 rows where PyTorch's has 1. A repair
    that cuts the table to the length is compared there on the row both have (it was refused for the 19 rows the
    original made up); one that cuts the wrong rows is still refuted there. A coincidence: no level."""
    right = parse(ADDS_TABLE.replace("BODY", CUT + "y = Add(x, rows)"))
    validation = validate(BAKED_TABLE, right, ValidationOptions())
    assert validation.passed, validation.reasons
    spread = [run for run in validation.runs if "spreads a length of 1" in run.note]
    assert spread and all(run.level == "runs" and run.outputs for run in spread)
    shifted = parse(ADDS_TABLE.replace("BODY", CUT + "later = Add(t, one)\n    rows = Slice(table, one, later)\n"
                                       "    y = Add(x, rows)").replace("rows = Slice(table, zero, t)\n    ", ""))
    assert not validate(BAKED_TABLE, shifted, ValidationOptions()).passed


def test_a_candidate_that_collapses_an_axis_the_original_follows_is_refuted_in_full():
    """The spread is a broadcast against a size the original's graph fixes: where the original's length follows
    its input (a healthy `2 * x`, its output's axis named by no input), a candidate that returns one row is
    compared in full, and differs (review, helper 33: it passed on the row both had)."""
    healthy = HEADER + "g (float[B, T, 4] x) => (float[B, frames, 4] y) <float two = {2.0}, int64[1] zero = {0}, " \
        "int64[1] one = {1}> {\n    BODY\n}"
    collapsed = parse(healthy.replace("BODY", "row = Slice(x, zero, one, one)\n    y = Mul(row, two)"))
    validation = validate(parse(healthy.replace("BODY", "y = Mul(x, two)")), collapsed, ValidationOptions())
    assert not validation.passed and "shape [2, 1, 4] instead of" in " ".join(validation.reasons)


def test_an_unchanged_model_is_its_own_original_and_require_is_checked():
    model = parse(HEADER + "g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }")
    same = validate(model, model, ValidationOptions(require="original"))
    assert same.passed and same.evidence == "original"


def test_evidence_is_in_the_json():
    validation = validate(key_padding(None), key_padding([1]), ValidationOptions())
    data = validation.to_json()
    assert data["evidence"] == "runs" and data["require"] == "runs" and data["failed_sizes"] == 0
    assert data["derived"] == {"matched": 0, "differed": 0}
    assert {run["level"] for run in data["runs"]} <= {"original", "consistent", "runs", None}
    assert all("derived" in run for run in data["runs"])


def test_failures_at_one_node_are_one_line_that_lists_their_sizes():
    from graphfix.validate.evidence import SizeRun, failure_reasons

    def failed(t: int, node: str) -> SizeRun:
        error = (f"Non-zero status code returned while running Reshape node. Name:'{node}' Status Message: "
                 f"/onnxruntime_src/reshape_helper.h:91 ReshapeHelper() size == 0 was false. The input tensor "
                 f"cannot be reshaped to the requested shape. Input shape:{{{t}}}")
        return SizeRun({"T": t}, error, error)

    runs = [failed(3, "/a"), failed(5, "/b"), failed(7, "/a"), SizeRun({"T": 9}, "its own error", "its own error")]
    assert failure_reasons(runs, "the model") == [
        "the model fails at sizes {'T': 3} and {'T': 7}: node '/a' (Reshape): The input tensor cannot be reshaped "
        "to the requested shape. Input shape:{3}",
        "the model fails at sizes {'T': 5}: node '/b' (Reshape): The input tensor cannot be reshaped to the "
        "requested shape. Input shape:{5}",
        "the model fails at sizes {'T': 9}: the model: its own error"]


def _counting(monkeypatch, module, name: str) -> list:
    """Calls of `module.name`, each recorded, the function itself unchanged."""
    calls, real = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def _wide(rank: int) -> tuple[onnx.ModelProto, dict[str, int]]:
    """An input of `rank` symbolic dims, half of them named like a batch, and an export size of 2 for each."""
    dims = [f"batch{i}" if i % 2 else f"d{i}" for i in range(rank)]
    return parse(HEADER + f"g (float[{', '.join(dims)}] x) => (float[N] y) {{ y = Relu(x) }}"), dict.fromkeys(dims, 2)


def test_the_batch_dims_are_read_once_per_judge_not_once_per_dim(monkeypatch):
    """`batch_dims` reads every dim of every input: asked once per dim, an input of 5000 symbolic dims took 25M
    regex searches (47 s) before the first run."""
    model, export = _wide(200)
    calls = _counting(monkeypatch, evidence, "batch_dims")
    judge = evidence.Judge(ModelRunner(model), ModelRunner(model), ValidationOptions(), export)
    assert len(calls) == 1
    assert judge.batch == ["d0", *(f"batch{i}" for i in range(1, 200, 2))]  # the leading dim, and the named ones


def test_the_minimum_size_check_reads_the_batch_dims_once(monkeypatch):
    """Not once per dim of the binding (graphfix.validate.minimum)."""
    model, export = _wide(200)
    calls = _counting(monkeypatch, minimum, "batch_dims")
    assert minimum.runs_with_its_batch(ModelRunner(model), model, export, export, ValidationOptions(), None)
    assert len(calls) == 1
