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


@pytest.mark.parametrize("output", ["out/sub/../fixed.onnx", "out/a/b/../../fixed.onnx", "out/sub/../sub2/fixed.onnx"])
def test_an_output_path_that_climbs_back_leaves_no_folder_behind(sandbox, output):
    """`-o out/sub/../fixed.onnx` made `out/sub` on the way and left it there, empty (helper 104): a folder the
    output is not in is not made."""
    onnx.save(onnx.parser.parse_model(HEALTHY), sandbox.cwd / "model.onnx")

    done = sandbox.run("repair", "model.onnx", "-o", output, timeout=90)

    assert done.returncode == 0, done.stderr
    written = os.path.normpath(sandbox.cwd / output)
    assert onnx.load(written).graph.node[0].op_type == "Relu"
    made = sorted(str(p.relative_to(sandbox.cwd)) for p in (sandbox.cwd / "out").rglob("*"))
    assert made == sorted({"out/fixed.onnx", "out/sub2", "out/sub2/fixed.onnx"} & {
        os.path.relpath(written, sandbox.cwd), os.path.dirname(os.path.relpath(written, sandbox.cwd))})


@pytest.mark.parametrize("output", ["victim.txt/missing/..", "victim.txt/missing/../x.onnx", "missing/x/..",
                                    "missing/.", "missing/"])
def test_an_output_path_that_names_a_folder_or_climbs_out_of_a_file_is_refused(sandbox, output):
    """helper 110: `-o victim.txt/missing/..` wrote the model over victim.txt (the `..` taken back lexically,
    though what came before it is a file), and `missing/x/..` or `missing/.` wrote a file named `missing`."""
    onnx.save(onnx.parser.parse_model(HEALTHY), sandbox.cwd / "model.onnx")
    (sandbox.cwd / "victim.txt").write_text("the user's own\n")

    done = sandbox.run("repair", "model.onnx", "-o", output, timeout=90)

    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stdout + done.stderr
    assert (sandbox.cwd / "victim.txt").read_text() == "the user's own\n"
    assert sorted(p.name for p in sandbox.cwd.iterdir()) == ["model.onnx", "victim.txt"]


@pytest.fixture
def deep_repo(sandbox):
    """repo/ with a healthy model at its top and at the bottom of 1,100 nested folders (made and taken down one
    level at a time: pathlib's mkdir(parents=True) and shutil.rmtree recurse too), and a link out of the sandbox
    at the bottom."""
    repo = sandbox.cwd / "repo"
    levels = [repo.joinpath(*["a"] * depth) for depth in range(1101)]
    for folder in levels:
        folder.mkdir()
    for folder in (repo, levels[-1]):
        onnx.save(onnx.parser.parse_model(HEALTHY), folder / "m.onnx")
    os.symlink(sandbox.outside, levels[-1] / "out")
    yield levels[-1]
    for path in (levels[-1] / "out", levels[-1] / "m.onnx", repo / "m.onnx"):
        path.unlink()
    for folder in reversed(levels):
        folder.rmdir()


@pytest.mark.parametrize("command", [("check", "repo", "--jobs", "1"), ("diagnose", "repo"),
                                     ("check", "repo/**/*.onnx", "--jobs", "1")])
def test_a_tree_a_thousand_folders_deep_is_walked_to_its_bottom(sandbox, deep_repo, command):
    """Helper 148: Python 3.11's os.walk and the glob matcher recursed once per folder, and a tree ~1,100 folders
    deep stopped every command with a RecursionError before any model was checked."""
    sandbox.touched()

    done = sandbox.run(*command, "--isolated", "--format", "json", timeout=120)

    assert done.returncode == 0, done.stderr
    found = [m["path"] for m in json.loads(done.stdout)["models"]]
    assert sorted(found) == [(deep_repo / "m.onnx").relative_to(sandbox.cwd).as_posix(), "repo/m.onnx"]
    assert sandbox.touched() == []
