"""Shared fixtures: tiny models built in code, and helpers to run them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from fixtures import repair_guard
from fixtures.torchaudio_cpu import install as install_torchaudio_without_its_library

install_torchaudio_without_its_library()  # a CUDA build: see tests/fixtures/torchaudio_cpu.py


def pytest_configure(config):
    # a wrong model passed as repaired fails the test that made it, over every export of the suite (#21)
    config.pluginmanager.register(repair_guard, "repair-guard")


def parse(text: str) -> onnx.ModelProto:
    """A model from ONNX text; the checker must accept it so tests start from valid graphs."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def matches_module(out, module, shapes, name: str = "x", rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """The written model `out` gives what the PyTorch `module` gives on random inputs of each of `shapes` (its one
    input `name`)."""
    import torch

    for shape in shapes:
        x = torch.randn(*shape)
        with torch.no_grad():
            np.testing.assert_allclose(run(str(out), {name: x.numpy()})[0], module(x).numpy(), rtol=rtol, atol=atol)


def agrees_with_module(out, module, shapes, name: str = "x", rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Whether onnxruntime runs `out` and gives what the PyTorch `module` gives at each of `shapes` (False where it
    fails: an export shown wrong before graphfix is asked)."""
    import torch

    for shape in shapes:
        x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        try:
            got = run(str(out), {name: x})[0]
        except Exception:
            return False
        if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
            return False
    return True


def op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def of_rule(code: str, findings) -> list:
    """The findings (or applied fixes) of rule `code`, in order."""
    return [f for f in findings if f.rule == code]


@pytest.fixture
def save(tmp_path):
    """save(model, name) -> path of the model written under tmp_path."""

    def _save(model: onnx.ModelProto, name: str = "model.onnx"):
        path = tmp_path / name
        onnx.save(model, path)
        return path

    return _save


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    peak_bytes: int  # the most memory it (or its forked worker) held


# Runs the command and writes its peak memory (its forked worker's included) to the file argv[1]. A process
# forked from the test runner starts with the runner's memory counted as its own peak (gigabytes, late in a
# suite); one forked from this small one does not.
_MEASURED = """
import os, resource, subprocess, sys
limit = int(sys.argv[2])
cap = (lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))) if limit else None
child = subprocess.Popen(sys.argv[3:], preexec_fn=cap)
_, status, usage = os.wait4(child.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def assert_left_alone(path, out) -> None:
    """What a healthy export gets: `diagnose` reports no error (exit 0), and `repair` writes it unchanged (exit 0),
    failing at no probe size."""
    from click.testing import CliRunner

    from graphfix.cli import cli

    runner = CliRunner()
    diagnosed = runner.invoke(cli, ["diagnose", str(path)])
    assert diagnosed.exit_code == 0 and "error" not in diagnosed.output, diagnosed.output
    repaired = runner.invoke(cli, ["repair", str(path), "-o", str(out)])
    assert repaired.exit_code == 0 and "unchanged" in repaired.output and "FAILS" not in repaired.output, \
        repaired.output


def bounded_graphfix(*args: str, seconds: float = 60, memory: int | None = None) -> Finished:
    """`python -m graphfix args` in its own session, with `memory` bytes of address space at most; past `seconds`
    the whole session (the forked worker too) is killed and the test fails, saying so."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r") as peak:
        child = subprocess.Popen([sys.executable, "-c", _MEASURED, peak.name, str(memory or 0), sys.executable,
                                  "-m", "graphfix", *args], stdout=out, stderr=err, text=True,
                                 start_new_session=True)
        try:
            child.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            pytest.fail(f"graphfix {' '.join(args)} ran past {seconds:g} s")
        out.seek(0)
        err.seek(0)
        return Finished(child.returncode, out.read(), err.read(), int(peak.read() or 0))


def sample_module(name: str):
    """samples/<name>/make_model.py as a module (the samples folder is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "samples" / name / "make_model.py"
    spec = importlib.util.spec_from_file_location(f"sample_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sandbox(tmp_path):
    """A folder with bait outside it, watched by inotify, and graphfix run in a fresh process there
    (tests/security/hostile.py; that folder is on sys.path for the tests that use it)."""
    from hostile import Sandbox

    made = Sandbox(tmp_path / "sandbox")
    made.touched()  # creating the bait is not the command's doing
    yield made
    made.close()
