"""#20 item 6: graphfix deletes only files it made in this run (the data a replaced model read is kept, and the
result says so: helper 104's model one folder up read it), and writes a model's data under a name derived from the
output's own name, never over a file (a taken name is passed over: `OUT.1.data`).

Repairs of a model with external data run in the model's folder (`cwd=`): from elsewhere, onnxruntime's shape
inference resolves data against the working folder (#20 item 3, not under test here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from writes_kit import healthy, hubert, run, same_outputs, self_located


def one_line_refusal(done, *words: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(word in done.stderr for word in words), done.stderr


def test_in_place_keeps_data_another_model_shares(sandbox):
    folder = sandbox.model_dir
    a, b = hubert(folder / "a.onnx", "weights.bin"), hubert(folder / "b.onnx", "weights.bin")
    expected = run(b)
    done = sandbox.run("repair", str(a), "--in-place", "--no-simplify", cwd=folder)
    assert done.returncode == 0 and "repaired" in done.stdout, done.stdout + done.stderr
    assert "kept" in done.stdout and "weights.bin" in done.stdout  # said, not done silently
    assert same_outputs(run(b), expected)  # the sibling still loads and gives what it gave
    run(a)
    assert sandbox.touched() == []


def test_output_onto_a_model_that_shares_data_keeps_it(sandbox):
    folder = sandbox.model_dir
    hubert(folder / "a.onnx", "weights.bin")
    b = hubert(folder / "b.onnx", "weights.bin")
    expected = run(b)
    source = hubert(sandbox.root / "in" / "c.onnx", "c.onnx.data")
    done = sandbox.run("repair", str(source), "-o", str(folder / "a.onnx"), "--no-simplify", cwd=source.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert same_outputs(run(b), expected)
    assert sorted(p.name for p in folder.iterdir()) == ["a.onnx", "a.onnx.data", "b.onnx", "weights.bin"]


SURGERY = {
    "set-shape": (hubert, "set-shape", "--shape", "features=1x32x16", "--shape", "padding_mask=1x32"),
    "freeze": (hubert, "freeze", "--input", "padding_mask=false", "--no-simplify"),
    "extract": (healthy, "extract", "--inputs", "x", "--outputs", "y"),
}


@pytest.mark.parametrize("command", list(SURGERY))
def test_surgery_onto_an_output_that_shares_the_input_data_keeps_it(sandbox, command):
    folder = sandbox.model_dir
    build, name, *args = SURGERY[command]
    source = build(folder / "model.onnx", "weights.bin")
    build(folder / "old.onnx", "weights.bin")  # an earlier output that reads the input's data too
    expected = run(source)
    done = sandbox.run(name, str(source), *args, "-o", str(folder / "old.onnx"), cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert same_outputs(run(source), expected)
    run(folder / "old.onnx")


def test_unchanged_repair_never_overwrites_a_data_file_of_another_model(sandbox):
    """The input's data file name is taken beside the output (by another model's data, or an earlier output of the
    same input): the copy's data goes under the output's own name, as always, and that file is left alone."""
    source = healthy(sandbox.model_dir / "model.onnx", "model.onnx.data")
    deployed = healthy(sandbox.outside / "deployed.onnx", "model.onnx.data", weight=2.0)
    expected = run(deployed)
    sandbox.touched()
    done = sandbox.run("repair", str(source), "-o", str(sandbox.outside / "fixed.onnx"))
    assert done.returncode == 0 and "unchanged" in done.stdout, done.stdout + done.stderr
    assert same_outputs(run(deployed), expected)
    assert same_outputs(run(sandbox.outside / "fixed.onnx"), run(source))
    assert sorted(p.name for p in sandbox.outside.iterdir()) == ["deployed.onnx", "fixed.onnx", "fixed.onnx.data",
                                                                  "model.onnx.data", "secret.bin"]
    stranger = sandbox.outside / "again.onnx.data"  # the output's own data name is taken: the next one is used
    stranger.write_bytes(b"a stranger's bytes")
    done = sandbox.run("repair", str(source), "-o", str(sandbox.outside / "again.onnx"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert stranger.read_bytes() == b"a stranger's bytes"
    assert same_outputs(run(sandbox.outside / "again.onnx"), run(source))
    assert (sandbox.outside / "again.onnx.1.data").is_file()


def test_changed_repair_never_overwrites_a_data_file_named_like_its_own(sandbox):
    source = hubert(sandbox.model_dir / "model.onnx", "model.onnx.data")
    deployed = healthy(sandbox.outside / "deployed.onnx", "fixed.onnx.data", weight=2.0)
    expected = run(deployed)
    done = sandbox.run("repair", str(source), "-o", str(sandbox.outside / "fixed.onnx"), "--no-simplify",
                       cwd=source.parent)
    assert done.returncode == 0, done.stdout + done.stderr  # its data goes under the next name
    assert same_outputs(run(deployed), expected)
    assert sorted(p.name for p in sandbox.outside.iterdir()) == ["deployed.onnx", "fixed.onnx", "fixed.onnx.1.data",
                                                                  "fixed.onnx.data", "secret.bin"]


def test_a_model_whose_data_is_its_own_file_survives_in_place_repair(sandbox):
    model = self_located(sandbox.model_dir / "model.onnx")
    run(model)
    done = sandbox.run("repair", str(model), "--in-place", "--no-simplify", cwd=model.parent)
    assert done.returncode == 0 and "repaired" in done.stdout, done.stdout + done.stderr
    assert sorted(p.name for p in sandbox.model_dir.iterdir()) == ["model.onnx", "model.onnx.data"]
    run(model)


def test_in_place_keeps_the_data_the_replaced_model_read_and_says_so(sandbox):
    """Helper 104: `top/main.onnx` read `models/a.onnx.data`, which an in-place repair of `models/a.onnx` deleted
    (only the models of the data's own folder were asked). graphfix deletes only what it made in the same run:
    the replaced data stays, and the result names it."""
    model = hubert(sandbox.model_dir / "model.onnx", "model.onnx.data")
    main = one_folder_up(model, sandbox.root / "main.onnx")
    expected = run(main)
    done = sandbox.run("repair", str(model), "--in-place", "--no-simplify", cwd=model.parent)
    assert done.returncode == 0 and "kept" in done.stdout and "model.onnx.data" in done.stdout, done.stdout
    assert sorted(p.name for p in sandbox.model_dir.iterdir()) == ["model.onnx", "model.onnx.1.data",
                                                                   "model.onnx.data"]
    assert same_outputs(run(main), expected)


def one_folder_up(model: Path, path: Path) -> Path:
    """The model again at `path`, its data read from the model's folder (`model/model.onnx.data`)."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = f"{model.parent.name}/{entry.value}"
    path.write_bytes(proto.SerializeToString())
    return path


def test_in_place_keeps_its_own_data_when_a_copy_of_the_model_reads_it(sandbox):
    model = hubert(sandbox.model_dir / "model.onnx", "model.onnx.data")
    copy = sandbox.model_dir / "backup.onnx"
    copy.write_bytes(model.read_bytes())  # reads model.onnx.data too
    expected = run(copy)
    done = sandbox.run("repair", str(model), "--in-place", "--no-simplify", cwd=model.parent)
    assert done.returncode == 0 and "kept" in done.stdout, done.stdout + done.stderr
    assert same_outputs(run(copy), expected)


@pytest.mark.parametrize("reader", ["a linked model", "a model reading it through a link"])
def test_in_place_keeps_its_own_data_when_a_linked_model_or_a_link_to_it_is_read(sandbox, reader):
    """Helper 63: `other.onnx -> ../elsewhere/other.onnx` reads `model.onnx.data` from this folder, and so does a
    model that names `shared.bin -> model.onnx.data`; an in-place repair deleted the data both read (a linked model
    was skipped, and only the data's own name was looked for)."""
    model = hubert(sandbox.model_dir / "model.onnx", "model.onnx.data")
    if reader == "a linked model":
        elsewhere = sandbox.root / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "other.onnx").write_bytes(model.read_bytes())
        (sandbox.model_dir / "other.onnx").symlink_to(elsewhere / "other.onnx")
    else:
        (sandbox.model_dir / "shared.bin").symlink_to("model.onnx.data")
        other = hubert(sandbox.root / "build" / "other.onnx", "shared.bin")  # the same model, its data so named
        (sandbox.model_dir / "other.onnx").write_bytes(other.read_bytes())
    other = sandbox.model_dir / "other.onnx"
    expected = run(other)
    done = sandbox.run("repair", str(model), "--in-place", "--no-simplify", cwd=model.parent)
    assert done.returncode == 0 and "kept" in done.stdout, done.stdout + done.stderr
    assert same_outputs(run(other), expected)


def test_output_dir_with_two_inputs_of_one_name_is_refused(sandbox):
    a = hubert(sandbox.model_dir / "A" / "model.onnx")
    b = healthy(sandbox.model_dir / "B" / "model.onnx")
    done = sandbox.run("repair", str(a), str(b), "--output-dir", str(sandbox.root / "out"), "--no-simplify")
    one_line_refusal(done, "would both be written to")
    assert not (sandbox.root / "out").exists()


@pytest.mark.parametrize("order", ["data-first", "model-first"])
def test_output_dir_where_one_model_s_data_is_named_like_another_model_s_output_writes_each_apart(sandbox, order):
    """Helper 55: x's weights in the file `y.onnx` of the same folder. Copied as it came, x's data landed on
    out/y.onnx, validated, and was then replaced by y's repaired output in the same run (exit 0). x's data now goes
    under x's output's own name, whichever model comes first, and each output gives what its input gave."""
    x = healthy(sandbox.model_dir / "a" / "x.onnx", "y.onnx")  # its data in a file called y.onnx
    y = hubert(sandbox.model_dir / "b" / "y.onnx")
    models = [str(x), str(y)] if order == "data-first" else [str(y), str(x)]
    out = sandbox.root / "out"
    done = sandbox.run("repair", *models, "--output-dir", str(out), "--no-simplify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["x.onnx", "x.onnx.data", "y.onnx"]
    assert same_outputs(run(out / "x.onnx"), run(x))
    run(out / "y.onnx")


def test_the_same_command_again_keeps_the_earlier_output_s_data(sandbox):
    """The same command twice: the earlier output is replaced, its data kept beside it (no run of this one made
    it) and named in the result; the new data goes under the next name."""
    source = healthy(sandbox.model_dir / "model.onnx", "weights.bin")
    out = sandbox.root / "out"
    for _ in range(2):
        done = sandbox.run("repair", str(source), "-o", str(out / "model.onnx"))
        assert done.returncode == 0 and "unchanged" in done.stdout, done.stdout + done.stderr
    assert "kept" in done.stdout and "model.onnx.data" in done.stdout, done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx.1.data", "model.onnx.data"]
    assert same_outputs(run(out / "model.onnx"), run(source))


def two_data_files(path, near: str, far: str) -> Path:
    """y = (x @ w1) @ w2 with w1 in `near` and w2 in `far` (both relative to the model's folder)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    def external(name: str, location: str, value: float) -> onnx.TensorProto:
        data = np.full((64, 64), value, np.float32)
        (path.parent / location).parent.mkdir(parents=True, exist_ok=True)
        (path.parent / location).write_bytes(data.tobytes())
        tensor = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[64, 64],
                                  data_location=TensorProto.EXTERNAL)
        for key, value in (("location", location), ("offset", "0"), ("length", str(data.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        return tensor

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w1"], ["h"]),
                               helper.make_node("MatMul", ["h", "w2"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
                              [external("w1", near, 0.5), external("w2", far, 3.0)])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_an_unchanged_copy_never_writes_over_the_inputs_own_data(sandbox):
    """A review's case: the input reads w.bin and sub/w.bin; the earlier output sub/o.onnx reads w.bin beside it,
    which is the input's sub/w.bin. Copied under its own name, the input's w.bin went over it (exit 0, the input
    silently changed); the copy now takes the output's own name."""
    folder = sandbox.model_dir
    source = two_data_files(folder / "m.onnx", "w.bin", "sub/w.bin")
    healthy(folder / "sub" / "o.onnx", "w.bin", weight=3.0)  # writes sub/w.bin the same (64x64 of 3.0)
    expected = run(source)
    done = sandbox.run("repair", str(source), "-o", str(folder / "sub" / "o.onnx"), cwd=folder)
    assert done.returncode == 0 and (folder / "sub" / "o.onnx.data").exists(), done.stdout + done.stderr
    assert same_outputs(run(source), expected) and same_outputs(run(folder / "sub" / "o.onnx"), expected)


def test_a_data_file_named_like_the_output_is_not_copied_over_it(sandbox):
    """The input's data file is called fixed.onnx and the output is fixed.onnx: the copy overwrote the staged model
    and the commit left raw weights as the output (exit 2, the file left behind)."""
    source = healthy(sandbox.model_dir / "model.onnx", "fixed.onnx")
    done = sandbox.run("repair", str(source), "-o", str(sandbox.outside / "fixed.onnx"))
    assert done.returncode == 0 and (sandbox.outside / "fixed.onnx.data").exists(), done.stdout + done.stderr
    assert same_outputs(run(sandbox.outside / "fixed.onnx"), run(source))


def test_an_unchanged_copy_never_follows_a_linked_folder_beside_the_output(sandbox):
    """The input's data is sub/w.bin and, beside the output, sub is a link to a folder elsewhere: the copy went
    through it, outside the output's folder (and the output failed to load)."""
    (sandbox.model_dir / "sub").mkdir(parents=True)
    source = healthy(sandbox.model_dir / "model.onnx", "sub/w.bin")
    out, elsewhere = sandbox.root / "out", sandbox.root / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    done = sandbox.run("repair", str(source), "-o", str(out / "fixed.onnx"))
    assert done.returncode == 0 and (out / "fixed.onnx.data").exists(), done.stdout + done.stderr
    assert list(elsewhere.iterdir()) == []
    assert same_outputs(run(out / "fixed.onnx"), run(source))


def test_an_in_memory_model_is_written_from_itself_not_from_a_file_of_its_folder(tmp_path):
    """A proto loaded with the folder of its data (`graphfix.api.load(proto, base_dir)`): no model file was read,
    so none is copied; a model.onnx that happened to lie in that folder (another model) was copied as the output
    (status unchanged, other outputs)."""
    import onnx

    from graphfix.api import load
    from graphfix.core.registry import select_rules
    from graphfix.core.rule import RuleOptions
    from graphfix.pipeline.repair import RepairOptions, repair_model

    mine = healthy(tmp_path / "mine.onnx", "mine.data")
    stranger = healthy(tmp_path / "model.onnx", "model.onnx.data", weight=2.0)
    options = RepairOptions(rules=select_rules((), ()), rule_options=RuleOptions())
    result = repair_model(load(onnx.load(str(mine), load_external_data=False), tmp_path),
                          tmp_path / "out" / "fixed.onnx", options)
    assert result.status == "unchanged"
    assert same_outputs(run(tmp_path / "out" / "fixed.onnx"), run(mine))
    assert not same_outputs(run(tmp_path / "out" / "fixed.onnx"), run(stranger))


def test_an_unchanged_copy_creates_no_file_or_folder_the_model_names(sandbox):
    """A downloaded, healthy model keeps its weights in `conftest.py` and `autostart/evil.desktop`: copied under
    those names, its repair beside a project made a conftest.py pytest would run and a folder of its choice. Its
    data now goes under the output's own names, and the output gives what the input gave. Under a hidden folder
    (`.config/autostart/...`) it is not read at all (security review 148): one line, nothing made."""
    source = two_data_files(sandbox.model_dir / "model.onnx", "conftest.py", "autostart/evil.desktop")
    project = sandbox.root / "project"
    project.mkdir()
    done = sandbox.run("repair", str(source), "-o", "fixed.onnx", cwd=project)
    assert done.returncode == 0 and "unchanged" in done.stdout, done.stdout + done.stderr
    assert sorted(p.name for p in project.iterdir()) == ["fixed.onnx", "fixed.onnx.1.data", "fixed.onnx.data"]
    assert same_outputs(run(project / "fixed.onnx"), run(source))
    hidden = two_data_files(sandbox.model_dir / "hidden" / "model.onnx", "conftest.py", ".config/autostart/x.desktop")
    done = sandbox.run("repair", str(hidden), "-o", "hidden.onnx", cwd=project)
    one_line_refusal(done, "hidden file or folder", ".config/autostart/x.desktop")
    assert sorted(p.name for p in project.iterdir()) == ["fixed.onnx", "fixed.onnx.1.data", "fixed.onnx.data"]


def test_output_dir_never_writes_through_a_linked_folder_inside_it(sandbox):
    """A checkout commits `fixed/x -> ~/.ssh`; `--output-dir fixed` wrote the model and its data (under a name the
    model chose) there. Refused in one line before anything is written; the folder named may itself be a link."""
    models = sandbox.model_dir / "models"
    healthy(models / "x" / "m.onnx", "authorized_keys")
    hubert(models / "a.onnx")
    victim, out = sandbox.root / "victim", sandbox.root / "fixed"
    victim.mkdir()
    out.mkdir()
    (out / "x").symlink_to(victim, target_is_directory=True)
    done = sandbox.run("repair", str(models), "--output-dir", str(out), "--no-simplify")
    one_line_refusal(done, "symbolic link", str(out / "x"))
    assert list(victim.iterdir()) == [] and sorted(p.name for p in out.iterdir()) == ["x"]
    named_link = sandbox.root / "named"
    named_link.symlink_to(victim, target_is_directory=True)
    done = sandbox.run("repair", str(models / "x"), "--output-dir", str(named_link), "--no-simplify")
    assert done.returncode == 0 and (victim / "m.onnx").is_file(), done.stdout + done.stderr


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_outputs_of_a_private_model_stay_private(sandbox):
    """A 0600 model was written 0644: repaired in place or beside it, made world-readable; an output the user had
    made 0600 was replaced by a 0644 one. A written model and its data take the replaced file's bits (no more for
    others than every input file gives: helper 106), else the input's; a report keeps the default."""
    folder = sandbox.model_dir
    broken, fine = hubert(folder / "broken.onnx", "broken.onnx.data"), healthy(folder / "fine.onnx", "fine.data")
    for path in (broken, folder / "broken.onnx.data", fine, folder / "fine.data"):
        path.chmod(0o600)
    out = sandbox.root / "out"
    out.mkdir()
    (out / "kept.onnx").write_bytes(b"")
    (out / "kept.onnx").chmod(0o640)
    runs = [("repair", str(broken), "-o", str(out / "broken.onnx"), "--no-simplify"),
            ("repair", str(fine), "-o", str(out / "fine.onnx")),
            ("repair", str(fine), "-o", str(out / "kept.onnx")),
            ("set-shape", str(fine), "--shape", "x=2x64", "-o", str(out / "shaped.onnx")),
            ("check", str(fine), "--output-file", str(out / "report.txt")),
            ("repair", str(broken), "--in-place", "--no-simplify")]
    for args in runs:
        done = sandbox.run(*args, cwd=folder)
        assert done.returncode in (0, 1), done.stdout + done.stderr
    assert {p.name: mode(p) for p in out.iterdir()} == {
        "broken.onnx": 0o600, "broken.onnx.data": 0o600, "fine.onnx": 0o600, "fine.onnx.data": 0o600,
        "kept.onnx": 0o600, "kept.onnx.data": 0o600,  # 0640 replaced: no more for others than the input gives
        "shaped.onnx": 0o600, "shaped.onnx.data": 0o600,
        "report.txt": 0o644}
    assert {p.name: mode(p) for p in folder.iterdir()} == {  # the replaced data is kept (made by no run of ours)
        "broken.onnx": 0o600, "broken.onnx.data": 0o600, "broken.onnx.1.data": 0o600, "fine.onnx": 0o600,
        "fine.data": 0o600}


def test_a_private_data_file_beside_a_readable_model_keeps_the_output_private(sandbox):
    """Helper 104: `onnx.save` writes external data 0600 beside a 0644 model; the output's data took the model's
    bits alone and was world-readable. The output takes the bits every input file has."""
    source = healthy(sandbox.model_dir / "m.onnx", "m.onnx.data")
    source.chmod(0o644)
    (sandbox.model_dir / "m.onnx.data").chmod(0o600)
    out = sandbox.root / "out"
    done = sandbox.run("repair", str(source), "-o", str(out / "o.onnx"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert {p.name: mode(p) for p in out.iterdir()} == {"o.onnx": 0o600, "o.onnx.data": 0o600}


def test_a_private_data_file_stays_private_when_repaired_in_place(sandbox):
    """Helper 106: a file replaced gave its bits to the new data alone (0644 for the model), so the in-place
    repair's new data of a 0600 data file was world-readable."""
    model = hubert(sandbox.model_dir / "model.onnx", "model.onnx.data")
    model.chmod(0o644)
    (sandbox.model_dir / "model.onnx.data").chmod(0o600)
    done = sandbox.run("repair", str(model), "--in-place", "--no-simplify", cwd=model.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert mode(sandbox.model_dir / "model.onnx.1.data") == 0o600 and mode(model) == 0o600
