"""#20 item 5: every file graphfix writes (the check report, models, their data) is written atomically (staged, then
renamed into place), never through a symbolic link, and never over an input of the same run (compared by inode)."""

from __future__ import annotations

import os

import onnx
import onnx.parser
import pytest
from writes_kit import healthy, run

KEYS = "ssh-ed25519 AAAA... the user's own key\n"


def one_line_refusal(done, *words: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(word in done.stderr for word in words), done.stderr


def test_check_report_is_not_written_through_a_committed_link(sandbox):
    model = healthy(sandbox.model_dir / "model.onnx")
    (sandbox.outside / "authorized_keys").write_text(KEYS)
    (sandbox.cwd / "graphfix.report.sarif").symlink_to(sandbox.outside / "authorized_keys")
    sandbox.touched()
    done = sandbox.run("check", str(model), "--format", "sarif", "--output-file", "graphfix.report.sarif")
    one_line_refusal(done, "symbolic link")
    assert (sandbox.outside / "authorized_keys").read_text() == KEYS
    assert sandbox.touched() == [str(sandbox.outside / "authorized_keys")]  # the read just above, nothing else


def test_check_report_replaces_the_name_not_the_file_it_shares(sandbox):
    """Written in place, a report hard-linked to another file would overwrite that file too; renamed into place,
    it replaces only its own name."""
    model = healthy(sandbox.model_dir / "model.onnx")
    (sandbox.outside / "keep.txt").write_text(KEYS)
    os.link(sandbox.outside / "keep.txt", sandbox.cwd / "report.json")
    sandbox.touched()
    done = sandbox.run("check", str(model), "--format", "json", "--output-file", "report.json")
    assert done.returncode == 0, done.stderr
    assert '"models"' in (sandbox.cwd / "report.json").read_text()
    assert sandbox.touched() == [] and (sandbox.outside / "keep.txt").read_text() == KEYS
    assert [p.name for p in sandbox.cwd.iterdir()] == ["report.json"]  # no staging left


@pytest.mark.parametrize("target", ["model.onnx", "model.onnx.data", "other name of the model"])
def test_check_report_never_replaces_an_input(sandbox, target):
    model = healthy(sandbox.model_dir / "model.onnx", "model.onnx.data")
    if target == "other name of the model":
        os.link(model, sandbox.model_dir / "report.txt")
        target = "report.txt"
    before = {p.name: p.read_bytes() for p in sandbox.model_dir.iterdir()}
    expected = run(model)
    done = sandbox.run("check", str(model), "--output-file", str(sandbox.model_dir / target))
    one_line_refusal(done, "would overwrite the input")
    assert {p.name: p.read_bytes() for p in sandbox.model_dir.iterdir()} == before
    assert run(model)[0].tolist() == expected[0].tolist()


@pytest.mark.parametrize("command", [
    ("repair",),
    ("set-shape", "--shape", "x=2x64"),
    ("extract", "--inputs", "x", "--outputs", "y"),
])
def test_model_outputs_are_not_written_through_a_link(sandbox, command):
    model = healthy(sandbox.model_dir / "model.onnx")
    victim = healthy(sandbox.outside / "victim.onnx", "victim.onnx.data", weight=3.0)
    (sandbox.root / "out").mkdir()
    link = sandbox.root / "out" / "fixed.onnx"
    link.symlink_to(victim)
    sandbox.touched()
    done = sandbox.run(command[0], str(model), *command[1:], "-o", str(link))
    one_line_refusal(done, "symbolic link")
    assert link.is_symlink() and sandbox.touched() == []
    assert sorted(p.name for p in sandbox.outside.iterdir()) == ["secret.bin", "victim.onnx", "victim.onnx.data"]


def test_an_output_dir_never_replaces_another_input_of_the_run(sandbox):
    a = healthy(sandbox.model_dir / "a.onnx")
    b = healthy(sandbox.model_dir / "sub" / "a.onnx", weight=2.0)
    before = b.read_bytes()
    done = sandbox.run("repair", str(a), str(b), "--output-dir", str(sandbox.model_dir / "sub"))
    one_line_refusal(done, "would overwrite the input")
    assert b.read_bytes() == before


@pytest.mark.parametrize("command", [
    ("check", "--format", "json", "--output-file"),
    ("set-shape", "--shape", "x=2x64", "-o"),
    ("repair", "--force", "-o"),
])
@pytest.mark.parametrize("what", ["model", "data"])
def test_the_file_an_input_is_read_through_a_link_is_the_input(sandbox, command, what):
    """Found by a review: read as `link.onnx`, the model is the file the link names; `-o real.onnx` replaced it
    (with a JSON report, for `check`), and a data file read through an in-folder link was overwritten the same
    way (the input's inode was compared without following its link)."""
    real = healthy(sandbox.model_dir / "real.onnx", "weights.bin")
    if what == "model":
        (sandbox.model_dir / "link.onnx").symlink_to("real.onnx")
        model, target = sandbox.model_dir / "link.onnx", real
    else:
        (sandbox.model_dir / "weights.bin").rename(sandbox.model_dir / "weights_real.bin")
        (sandbox.model_dir / "weights.bin").symlink_to("weights_real.bin")
        model, target = real, sandbox.model_dir / "weights_real.bin"
    before = {p.name: p.read_bytes() for p in sandbox.model_dir.iterdir()}
    done = sandbox.run(command[0], str(model), *command[1:], str(target))
    one_line_refusal(done, "would overwrite the input")
    assert {p.name: p.read_bytes() for p in sandbox.model_dir.iterdir()} == before


@pytest.mark.parametrize("when", ["before its checks", "between its checks and its rename"])
def test_a_folder_swapped_for_a_link_while_the_output_is_committed_is_not_followed(sandbox, monkeypatch, when):
    """`--output-dir fixed`: the commit checked that no folder below `fixed` is a link, then renamed by path. A
    process that swapped `fixed/x` for a link to `outside` in between (the real folder moved aside inside
    `fixed`, a copy of the staging folder put outside) had the model renamed into `outside`. The commit now
    holds `fixed/x` and its staging folder open (opened without following a link) from its checks to its
    rename: a link swapped in before is refused, one swapped in after is never followed (the model lands in the
    folder that was checked), and nothing outside is touched. The swap runs at the first `os.fsync` of the
    commit, which comes after its checks."""
    import shutil

    import onnx.parser

    from graphfix.core.errors import OutputError
    from graphfix.io.saving import stage_model

    out = sandbox.root / "fixed"
    model = onnx.parser.parse_model('< ir_version: 8, opset_import: ["" : 17] > g (float[N, 4] x) => '
                                    "(float[N, 4] y) { y = Relu(x) }")
    staged = stage_model(model, out / "x" / "m.onnx", within=out)
    stage = staged.temp_dir.name

    def swap() -> None:
        (out / "x").rename(out / "moved")
        shutil.copytree(out / "moved" / stage, sandbox.outside / stage)
        (out / "x").symlink_to(sandbox.outside, target_is_directory=True)
        sandbox.touched()  # the swapping process's own doing

    synced = os.fsync

    def swapping_sync(fd: int) -> None:
        if not (out / "moved").exists():
            swap()
        synced(fd)

    if when == "before its checks":
        swap()
    else:
        monkeypatch.setattr(os, "fsync", swapping_sync)
    try:
        staged.commit()
    except OutputError as refused:
        assert when == "before its checks" and "symbolic link" in str(refused)
    else:
        assert when != "before its checks" and (out / "moved" / "m.onnx").is_file()
    finally:
        monkeypatch.undo()
    assert (out / "moved").is_dir() and not (sandbox.outside / "m.onnx").exists()
    assert sandbox.touched() == [] and sorted(p.name for p in sandbox.outside.iterdir()) == [stage, "secret.bin"]


TWO = '< ir_version: 8, opset_import: ["" : 17] > g (float[N, 64] x, float[2, 64] m) => (float[N, 64] y) {\n' \
    '  y = Add(x, m)\n}'
CONFIG = '[tool.graphfix]\nrtol = 1e-3\n[tool.graphfix.inputs."*.onnx"]\nvalues = { x = "v.npy" }\n'


@pytest.mark.parametrize(("args", "replaced"), [
    (["repair", "model.onnx", "--input", "x=x.npy", "-o", "x.npy"], "x.npy"),
    (["freeze", "two.onnx", "--input", "m=@x.npy", "-o", "x.npy"], "x.npy"),
    (["check", "model.onnx", "--output-file", "v.npy"], "v.npy"),  # an array the configuration names
    (["repair", "model.onnx", "-o", "pyproject.toml"], "pyproject.toml"),  # the configuration found
    (["check", "model.onnx", "--config", "pyproject.toml", "--output-file", "pyproject.toml"], "pyproject.toml"),
])
def test_no_output_replaces_a_file_the_run_reads(sandbox, args, replaced):
    """helper 108: only the models and their data were inputs an output could not replace; the run's arrays and
    its configuration were written over (with exit 0), and every later run in the project failed on them."""
    import numpy as np

    healthy(sandbox.cwd / "model.onnx")
    onnx.save(onnx.parser.parse_model(TWO), sandbox.cwd / "two.onnx")
    for name in ("x.npy", "v.npy"):
        np.save(sandbox.cwd / name, np.ones((2, 64), np.float32))
    (sandbox.cwd / ".git").mkdir()
    (sandbox.cwd / "pyproject.toml").write_text(CONFIG)
    before = (sandbox.cwd / replaced).read_bytes()

    done = sandbox.run(*args)

    assert done.returncode != 0 and "which this run reads" in done.stderr + done.stdout, done.stdout + done.stderr
    assert (sandbox.cwd / replaced).read_bytes() == before


@pytest.mark.parametrize("command", [("repair",), ("set-shape", "--shape", "x=2x64")])
def test_a_dash_for_the_output_is_refused_not_written_as_a_file_of_that_name(sandbox, command):
    """`-o -` reads as stdout to most tools: graphfix wrote a file named `-` in the working folder (helper 126)."""
    model = healthy(sandbox.model_dir / "model.onnx")
    done = sandbox.run(command[0], str(model), *command[1:], "-o", "-")
    one_line_refusal(done, "'-' is no file graphfix writes to")
    assert not (sandbox.cwd / "-").exists()
