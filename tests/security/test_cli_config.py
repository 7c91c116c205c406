"""Configuration (#20 item 11): settings come from the project — never from a pyproject.toml planted in a shared
parent folder or above the repository root — and value files stay regular files inside the config's folder."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnx.parser
import pytest

# statically fine; fails in onnxruntime unless `s` holds a shape that fits: `check` exits 1
RESHAPE = ('< ir_version: 8, opset_import: ["" : 17] > '
           "g (float[N, 6] x, int64[2] s) => (float[A, B] y) { y = Reshape(x, s) }")
SWITCH_OFF = '[tool.graphfix]\nignore = ["GF004", "runtime-failure"]\nfail-on = "never"\n'


def project(folder):
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx.parser.parse_model(RESHAPE), folder / "m.onnx")
    return folder


def test_the_projects_own_config_switches_the_rules_off(sandbox):
    (project(sandbox.cwd) / "pyproject.toml").write_text(SWITCH_OFF)
    done = sandbox.run("check", "m.onnx", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["config"] == str(sandbox.cwd / "pyproject.toml")  # says which file it used


def test_a_config_planted_in_a_folder_anyone_may_write_is_not_read(sandbox):
    project(sandbox.cwd)
    (sandbox.root / "pyproject.toml").write_text(SWITCH_OFF)
    sandbox.root.chmod(0o1777)  # like /tmp
    done = sandbox.run("check", "m.onnx", "--format", "json")
    assert done.returncode == 1, done.stderr
    assert "config" not in json.loads(done.stdout)


@pytest.mark.parametrize("marker", [".git", "pyproject.toml"])
def test_the_search_stops_at_the_repository_root_or_the_first_pyproject(sandbox, marker):
    repo = project(sandbox.cwd / "repo")
    (sandbox.cwd / "pyproject.toml").write_text(SWITCH_OFF)  # above the repository
    if marker == ".git":
        (repo / ".git").mkdir()
    else:
        (repo / "pyproject.toml").write_text("[project]\nname = 'models'\n")
    done = sandbox.run("check", "m.onnx", cwd=repo)
    assert done.returncode == 1, done.stderr


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "link", "fifo"])
def test_value_files_are_regular_files_inside_the_config_folder(sandbox, kind):
    root = project(sandbox.cwd)
    np.save(sandbox.outside / "s.npy", np.array([-1, 3], dtype=np.int64))
    (root / "data").mkdir()
    file = {"absolute": str(sandbox.outside / "s.npy"), "dotdot": "../outside/s.npy"}.get(kind, "data/s.npy")
    if kind == "link":
        os.symlink(sandbox.outside / "s.npy", root / "data" / "s.npy")
    if kind == "fifo":
        os.mkfifo(root / "data" / "s.npy")  # a plain open waits for a writer forever
    (root / "pyproject.toml").write_text(f'[tool.graphfix.inputs."*.onnx"]\nvalues = {{ s = "{file}" }}\n')
    sandbox.touched()
    done = sandbox.run("check", "m.onnx", timeout=60)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "s.npy" in done.stderr, done.stderr
    assert sandbox.touched() == []


def test_a_value_file_inside_the_config_folder_is_read(sandbox):
    root = project(sandbox.cwd)
    (root / "data").mkdir()
    np.save(root / "data" / "s.npy", np.array([-1, 3], dtype=np.int64))
    (root / "pyproject.toml").write_text('[tool.graphfix.inputs."*.onnx"]\nvalues = { s = "data/s.npy" }\n')
    done = sandbox.run("check", "m.onnx")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_config_found_by_search_is_not_read_through_a_link(sandbox):
    """A checkout's pyproject.toml that links to a file outside it is not read (helper 58): one line, exit 2,
    and the outside file, which would switch the gate off, is not applied."""
    outside = sandbox.root / "outside.toml"
    outside.write_text(SWITCH_OFF)
    (project(sandbox.cwd) / "pyproject.toml").symlink_to(outside)
    done = sandbox.run("check", "m.onnx")
    assert done.returncode == 2 and "symbolic link" in done.stderr, (done.returncode, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
