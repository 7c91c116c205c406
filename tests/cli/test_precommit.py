"""The pre-commit hook, for real: a temporary git repository commits a broken model (pre-commit fails), then a
healthy one (it passes).

`test_hook_repository` uses this repository as a hook repository, exactly as users do (`repo:` + `rev:`,
`language: python`): pre-commit clones it at a commit and pip-installs graphfix into its own virtualenv (about
35 s here, with PyPI reachable). The commit is a snapshot of the working tree (tracked and untracked, not ignored,
files), which is HEAD itself in CI's fresh clone, so the test checks the manifest being committed.
`test_local_hook` runs the same manifest entry as a `repo: local`, `language: system` hook with the graphfix
installed here: no network, a few seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import yaml
from conftest import parse

REPO = Path(__file__).resolve().parents[2]
HEADER = '< ir_version: 8, opset_import: ["" : 17] >\n'
BROKEN = "g (float[N, 4] x) => (float[1] y) { y = Constant <value = float[1] {1.0}> () }"  # GF001 error
HEALTHY = "g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1"}

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("git") is None, reason="needs git")]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=_env(), check=True, capture_output=True, text=True).stdout


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "PRE_COMMIT", "PYTHONPATH"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return {**env, **GIT_ENV, **extra}


def manifest_hook() -> dict:
    [hook] = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    return hook


def snapshot(dest: Path) -> str:
    """This repository's working tree committed into `dest`; returns the commit."""
    files = git(REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "snapshot")
    return git(dest, "rev-parse", "HEAD").strip()


def gate(project: Path, config: dict, home: Path, timeout: int) -> None:
    """Commit a broken model: pre-commit fails naming the finding; replace it by a healthy one: it passes."""
    project.mkdir()
    git(project, "init", "-q")
    (project / ".pre-commit-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (project / "models").mkdir()
    (project / "README.txt").write_text("not a model: the hook must not see it\n")
    onnx.save(parse(HEADER + BROKEN), project / "models" / "model.onnx")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "broken model")

    def run():
        return subprocess.run([sys.executable, "-m", "pre_commit", "run", "--all-files", "--color", "never"],
                              cwd=project, env=_env(PRE_COMMIT_HOME=str(home)), capture_output=True, text=True,
                              timeout=timeout)

    broken = run()
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "graphfix check" in broken.stdout and "Failed" in broken.stdout
    assert "GF001 truncated-graph" in broken.stdout and "models/model.onnx" in broken.stdout
    assert "README.txt" not in broken.stdout

    onnx.save(parse(HEADER + HEALTHY), project / "models" / "model.onnx")
    git(project, "commit", "-q", "-am", "healthy model")
    healthy = run()
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "Passed" in healthy.stdout


def test_manifest_declares_the_hook():
    hook = manifest_hook()
    assert hook["id"] == "graphfix-check"
    assert (hook["language"], hook["entry"]) == ("python", "graphfix check")
    assert hook["files"] == r"\.onnx$"


def test_local_hook(tmp_path):
    hook = {**manifest_hook(), "language": "system"}
    if shutil.which("graphfix", path=_env()["PATH"]) is None:
        pytest.skip("graphfix is not installed on PATH")
    gate(tmp_path / "project", {"repos": [{"repo": "local", "hooks": [hook]}]}, tmp_path / "home", timeout=300)


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs a git checkout of graphfix")
def test_hook_repository(tmp_path):
    (tmp_path / "hooks").mkdir()
    rev = snapshot(tmp_path / "hooks")
    config = {"repos": [{"repo": str(tmp_path / "hooks"), "rev": rev, "hooks": [{"id": "graphfix-check"}]}]}
    gate(tmp_path / "project", config, tmp_path / "home", timeout=900)


def test_a_file_named_like_an_option_is_refused_not_parsed(tmp_path):
    """pre-commit appends file names after the hook's options: a repository that holds a model at the path
    `--output-file=<outside>/victim.onnx` (a folder `--output-file=` and the rest below it) had `graphfix check`
    parse it as that option and overwrite a file outside the repository with its report, the hook passing
    (helper 55). Now the word is refused before anything runs: the hook fails, and nothing outside is touched."""
    hook = {**manifest_hook(), "language": "system"}
    if shutil.which("graphfix", path=_env()["PATH"]) is None:
        pytest.skip("graphfix is not installed on PATH")
    victim = tmp_path / "outside" / "victim.onnx"
    victim.parent.mkdir()
    onnx.save(parse(HEADER + HEALTHY), victim)
    before = victim.read_bytes()
    project = tmp_path / "project"
    planted = project / f"--output-file={victim}"  # the word pre-commit passes: `--output-file=/.../victim.onnx`
    planted.parent.mkdir(parents=True)
    onnx.save(parse(HEADER + HEALTHY), planted)
    onnx.save(parse(HEADER + HEALTHY), project / "model.onnx")
    (project / ".pre-commit-config.yaml").write_text(yaml.safe_dump({"repos": [{"repo": "local", "hooks": [hook]}]}))
    git(project, "init", "-q")
    git(project, "add", "-A")
    done = subprocess.run([sys.executable, "-m", "pre_commit", "run", "--all-files", "--color", "never"],
                          cwd=project, env=_env(PRE_COMMIT_HOME=str(tmp_path / "home")), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0 and "reads as an option but names an existing file" in done.stdout, done.stdout
    assert victim.read_bytes() == before
