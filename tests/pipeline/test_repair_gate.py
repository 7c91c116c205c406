"""`graphfix repair` end to end: what it writes, what it refuses, and exit codes a CI can trust."""

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from graphfix.cli import cli
from graphfix.io import saving
from graphfix.validate.references import EXACT

HUBERT = Path(__file__).resolve().parents[2] / "samples" / "hubert_padding_mask" / "model.onnx"


def repair(*args):
    return CliRunner().invoke(cli, ["repair", *map(str, args)], catch_exceptions=False)


def key_padding() -> onnx.ModelProto:
    """Where(mask[B, T], -1e9, scores[B, T, T]): right at batch 1; GF003 offers masking keys as an UNSAFE fix
    (the mask could also mean queries), so a default repair leaves it as it came."""
    graph = helper.make_graph(
        [helper.make_node("Where", ["mask", "neg", "scores"], ["out"], name="where")], "g",
        [helper.make_tensor_value_info("mask", TensorProto.BOOL, ["B", "T"]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", "T", "T"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", "T", "T"])],
        [numpy_helper.from_array(np.array(-1e9, np.float32), "neg")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def healthy_reshape() -> onnx.ModelProto:
    """Reshape(x[B, 8], [2, -1, 4]): runs at every B. Traced at B=2, GF004's rewrite to [0, -1, 4] is an UNSAFE
    guess (no constraint pins the 2) that changes the output wherever B != 2."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, None, 4])],
        [numpy_helper.from_array(np.array([2, -1, 4], np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


TRACED_UNSAFE = ("--trace-shape", "x=2x8", "--unsafe-fixes")  # applies the rewrite the validator must refuse


def fails_unfixably() -> onnx.ModelProto:
    """Gather with an index past its table at every size: nothing a rule can fix."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "index"], ["g"], name="gather"),
         helper.make_node("Add", ["x", "g"], ["y"], name="add")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.zeros((3, 4), np.float32), "table"),
         numpy_helper.from_array(np.array(7, np.int64), "index")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_repair_that_fails_validation_is_not_written(tmp_path):
    onnx.save(healthy_reshape(), tmp_path / "m.onnx")
    done = repair(tmp_path / "m.onnx", "-o", tmp_path / "out.onnx", *TRACED_UNSAFE)
    assert done.exit_code == 1
    assert "applied GF004 [reshape]" in done.output
    assert not (tmp_path / "out.onnx").exists() and list(tmp_path.iterdir()) == [tmp_path / "m.onnx"]
    assert "validation: FAILED at" in done.output and "error: validation failed" in done.output


def test_force_writes_it_says_so_and_still_exits_1(tmp_path):
    onnx.save(healthy_reshape(), tmp_path / "m.onnx")
    done = repair(tmp_path / "m.onnx", "-o", tmp_path / "out.onnx", *TRACED_UNSAFE, "--force")
    assert done.exit_code == 1 and (tmp_path / "out.onnx").exists()
    assert "written despite failed validation (--force)" in done.output


def test_an_unchanged_model_that_fails_is_written_as_it_came_and_exits_1(tmp_path):
    onnx.save(fails_unfixably(), tmp_path / "m.onnx")
    done = repair(tmp_path / "m.onnx", "-o", tmp_path / "out.onnx")
    assert done.exit_code == 1, done.output
    assert (tmp_path / "out.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()
    assert "unchanged" in done.output and "validation: FAILED at 3 of 3 size(s)\n" in done.output
    sizes = [line.split()[0] for line in done.output.splitlines() if " at N=" in line]
    assert sizes == ["FAILS"] * 3, done.output  # each size says what happened there, not an evidence level


def test_a_healthy_model_whose_only_fix_is_a_guess_is_written_unchanged(tmp_path):
    # runs at every B: the 2 may be the model's own, so GF004's rewrite is an unsafe warning; written as it came
    onnx.save(healthy_reshape(), tmp_path / "m.onnx")
    done = repair(tmp_path / "m.onnx", "-o", tmp_path / "out.onnx", "--trace-shape", "x=2x8")
    assert done.exit_code == 0, done.output
    assert "unchanged" in done.output and "applied" not in done.output
    assert "warning GF004" in done.output and "(unsafe)" in done.output
    assert (tmp_path / "out.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()


def test_a_broken_model_whose_only_fix_is_a_guess_is_not_written(tmp_path):
    # ambiguous mask: an ERROR with only an unsafe fix; written as it came it would still fail: nothing written
    onnx.save(key_padding(), tmp_path / "m.onnx")
    done = repair(tmp_path / "m.onnx", "-o", tmp_path / "out.onnx")
    assert done.exit_code == 1, done.output
    assert "unchanged" in done.output and "applied GF" not in done.output  # no fix applied, and nothing written
    assert "not written: 1 error finding(s) that no applied fix addresses (GF003 at 'where')" in done.output
    assert "more than one way" in done.output and "(unsafe)" in done.output
    assert not (tmp_path / "out.onnx").exists()
    forced = repair(tmp_path / "m.onnx", "-o", tmp_path / "out.onnx", "--force")
    assert forced.exit_code == 1 and "(--force)" in forced.output
    assert (tmp_path / "out.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()


def test_the_key_padding_where_is_repaired_to_mask_keys_with_unsafe_fixes(tmp_path):
    onnx.save(key_padding(), tmp_path / "m.onnx")
    done = repair(tmp_path / "m.onnx", "-o", tmp_path / "out.onnx", "--unsafe-fixes")
    assert done.exit_code == 0, done.output
    assert "applied GF003 [where]" in done.output and "validation: passed" in done.output
    session = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, time in ((1, 4), (3, 5), (2, 7)):
        mask, scores = rng.random((batch, time)) < 0.3, rng.standard_normal((batch, time, time)).astype(np.float32)
        (got,) = session.run(None, {"mask": mask, "scores": scores})
        np.testing.assert_array_equal(got, np.where(mask[:, None, :], np.float32(-1e9), scores))  # keys masked
        if batch == 1:  # where the original runs, the repair computes what it computes
            original = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
            np.testing.assert_array_equal(got, original.run(None, {"mask": mask, "scores": scores})[0])


def test_a_model_with_only_info_findings_is_written_byte_for_byte(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["i"], name="id"), helper.make_node("Relu", ["i"], ["y"], name="relu")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])],
        [numpy_helper.from_array(np.ones(3, np.float32), "unused")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    done = repair(tmp_path / "m.onnx", "-o", tmp_path / "out.onnx")
    assert done.exit_code == 0, done.output
    assert "unchanged" in done.output and "info GF001" in done.output
    assert (tmp_path / "out.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()


def hubert_external(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    onnx.save(onnx.load(HUBERT), folder / "model.onnx", save_as_external_data=True, location="model.onnx.data")
    return folder / "model.onnx"


def run_hubert(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    return session.run(None, {"features": rng.standard_normal((2, 9, 16)).astype(np.float32),
                              "padding_mask": np.arange(9)[None, :] >= np.array([[9], [5]])})[0]


def test_external_data_model_repaired_to_another_folder(tmp_path):
    source = hubert_external(tmp_path / "in")
    done = repair(source, "-o", tmp_path / "out" / "fixed.onnx", "--no-simplify")
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fixed.onnx", "fixed.onnx.data"]
    assert run_hubert(tmp_path / "out" / "fixed.onnx").shape == (2, 9, 32)


def test_unchanged_external_data_model_is_copied_its_data_under_the_output_s_name(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    model = onnx.load(HUBERT)
    fixed = repair_in_memory(model)
    onnx.save(fixed, folder / "model.onnx", save_as_external_data=True, location="weights.bin")
    done = repair(folder / "model.onnx", "-o", tmp_path / "out" / "model.onnx")
    assert done.exit_code == 0 and "unchanged" in done.output, done.output
    # the data byte for byte, under the output's name (never one the model gives); the graph as it came, its
    # locations renamed to match
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "model.onnx.data"]
    assert (tmp_path / "out" / "model.onnx.data").read_bytes() == (folder / "weights.bin").read_bytes()
    written, given = (onnx.load(str(f / "model.onnx"), load_external_data=False) for f in (tmp_path / "out", folder))
    for tensor in given.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "model.onnx.data"
    assert written == given


def repair_in_memory(model: onnx.ModelProto) -> onnx.ModelProto:
    import graphfix

    return graphfix.repair(model, simplify=False).model


def test_in_place_swaps_the_pair_and_keeps_the_old_data(tmp_path):
    """The old data is named, not deleted: graphfix deletes only what it made in the same run (helper 104)."""
    source = hubert_external(tmp_path)
    done = repair(source, "--in-place", "--no-simplify")
    assert done.exit_code == 0 and "kept" in done.output, done.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.1.data", "model.onnx.data"]
    assert run_hubert(source).shape == (2, 9, 32)
    assert repair(source, "--in-place", "--no-simplify").exit_code == 0  # unchanged now: written as it came
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.1.data", "model.onnx.data"]


class Crash(BaseException):
    """Not an Exception: nothing on the way up may handle it, as nothing handles a killed process."""


def test_a_crash_before_the_graph_is_swapped_leaves_the_old_pair_usable(tmp_path, monkeypatch):
    source = hubert_external(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace = os.replace

    def crash_on_the_graph(src, dst, **dir_fds):
        if Path(dst).name == source.name:  # a name in the source's folder, held open by the commit
            raise Crash  # the process dies between the data and the graph
        real_replace(src, dst, **dir_fds)

    monkeypatch.setattr(saving.os, "replace", crash_on_the_graph)
    with pytest.raises(Crash):
        repair(source, "--in-place", "--no-simplify")
    assert {name: (tmp_path / name).read_bytes() for name in before} == before  # the old pair, untouched
    onnx.checker.check_model(onnx.load(source))


def test_internal_errors_exit_2_with_a_debug_hint(tmp_path, monkeypatch):
    onnx.save(key_padding(), tmp_path / "m.onnx")
    import graphfix.cli.repair as command

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(command, "repair_file", broken)  # the CLI's handling is under test, not repair_file
    done = CliRunner().invoke(cli, ["repair", str(tmp_path / "m.onnx"), "--dry-run"])
    assert done.exit_code == 2
    assert "internal error" in done.output and "--debug" in done.output and "Traceback" not in done.output


def baked_reshape() -> onnx.ModelProto:
    """X[N, T, 4] -> Reshape([12, 4]): traced at N=2, T=6; T has no reference anywhere but its export size."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["X", "target"], ["Y"], name="flatten")], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "T", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["NT", 4])],
        [numpy_helper.from_array(np.array([12, 4], np.int64), "target")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_require_sets_the_evidence_repair_must_reach(tmp_path):
    onnx.save(baked_reshape(), tmp_path / "m.onnx")
    traced = ("--trace-shape", "X=2x6x4", "--no-simplify")
    refused = repair(tmp_path / "m.onnx", "-o", tmp_path / "out.onnx", *traced, "--require", "consistent")
    assert refused.exit_code == 1 and not (tmp_path / "out.onnx").exists()
    assert "evidence: N consistent, T runs" in refused.output and "--require runs" in refused.output
    accepted = repair(tmp_path / "m.onnx", "-o", tmp_path / "out.onnx", *traced)  # `runs` is the default
    assert accepted.exit_code == 0 and (tmp_path / "out.onnx").exists(), accepted.output
    assert "evidence: N consistent, T runs" in accepted.output
    assert f"original   at N=2 T=6: {EXACT}" in accepted.output
    assert repair(tmp_path / "m.onnx", "--dry-run", "--require", "torch").exit_code == 2
