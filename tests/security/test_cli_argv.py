"""File names that read as options. pre-commit (and any caller that appends file names after the options) passes a
repository's files as they are named: a model stored at `--output-file=/elsewhere/victim.onnx` (a folder named
`--output-file=`, the rest below it) was parsed as that option, and `graphfix check` overwrote the file outside the
repository with its report (helper 55). Such a word is refused before anything runs; after `--` it is a file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

HUBERT = Path(__file__).resolve().parents[2] / "samples" / "hubert_padding_mask" / "model.onnx"


@pytest.mark.parametrize("option", ["--output-file=", "--config=", "-o"])
def test_a_file_named_like_an_option_is_refused_and_nothing_outside_is_touched(sandbox, option):
    victim = sandbox.outside / "victim.onnx"
    shutil.copy(HUBERT, victim)
    word = f"{option}{victim}"
    planted = sandbox.cwd / word  # the folder `--output-file=` (or `-o`), then the victim's path below it
    planted.parent.mkdir(parents=True)
    shutil.copy(HUBERT, planted)
    shutil.copy(HUBERT, sandbox.cwd / "model.onnx")
    sandbox.touched()
    done = sandbox.run("check", "model.onnx", word)
    assert done.returncode == 2 and "reads as an option but names an existing file" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert sandbox.touched() == []
    after = sandbox.run("check", "--", "model.onnx", word)  # a file name after `--`: checked as the model it is
    assert after.returncode == 1 and "GF003" in after.stdout, after.stdout + after.stderr
    assert sandbox.touched() == []
