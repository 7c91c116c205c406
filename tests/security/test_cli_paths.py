"""Folders and quoted globs (#20 item 10): a symlink loop does not make the walk explode, and no link leads the
walk out of the tree it names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import onnx.parser
import pytest

HEALTHY = '< ir_version: 8, opset_import: ["" : 17] > g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }'


@pytest.mark.parametrize("target", ["repo/**/*.onnx", "repo"])
def test_link_loops_and_links_out_of_the_tree_are_not_followed(sandbox, target):
    repo = sandbox.cwd / "repo"
    (repo / "a" / "b").mkdir(parents=True)
    onnx.save(onnx.parser.parse_model(HEALTHY), repo / "a" / "model.onnx")
    for name in ("loop1", "loop2"):  # each level doubles what a link-following walk visits
        os.symlink("../..", repo / "a" / "b" / name)
    onnx.save(onnx.parser.parse_model(HEALTHY), sandbox.outside / "stolen.onnx")
    os.symlink(sandbox.outside, repo / "out")
    os.symlink(sandbox.outside / "stolen.onnx", repo / "linked.onnx")
    sandbox.touched()

    done = sandbox.run("check", target, "--isolated", "--format", "json", "--jobs", "1", timeout=90)

    assert done.returncode == 0, done.stderr
    assert [m["path"] for m in json.loads(done.stdout)["models"]] == ["repo/a/model.onnx"]
    assert sandbox.touched() == []


def test_a_glob_matches_like_the_shell_globstar(tmp_path, monkeypatch):
    from graphfix.io.paths import expand_globs

    for name in ("m.onnx", "x/m.onnx", "x/y/m.onnx", "x/.hidden/m.onnx", "x/y/m.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    monkeypatch.chdir(tmp_path)
    assert [p.as_posix() for p in expand_globs([Path("**/*.onnx")])] == ["m.onnx", "x/m.onnx", "x/y/m.onnx"]
    assert [p.as_posix() for p in expand_globs([Path("x/*/*.onnx")])] == ["x/y/m.onnx"]
    assert [p.as_posix() for p in expand_globs([tmp_path / "x/**/m.*"])] == [
        f"{tmp_path}/x/m.onnx", f"{tmp_path}/x/y/m.onnx", f"{tmp_path}/x/y/m.txt"]
