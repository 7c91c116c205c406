"""Third-party rules (#20 item 15): a malformed or broken `graphfix.rules` entry point is one line, never the end of
every command (`rules` and `--isolated` included); the built-in rules still run."""

from __future__ import annotations

import os

import onnx
import onnx.parser

HEALTHY = '< ir_version: 8, opset_import: ["" : 17] > g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }'
ENTRY_POINTS = """[graphfix.rules]
not a code = evil_plugin:Rule
XYZ001 = no_such_module_anywhere:Rule
GF900 = evil_plugin:Rule
XYZ002 = ::
"""


def install_plugin(folder):
    """A distribution `evil-plugin` whose entry points are all broken, on PYTHONPATH."""
    info = folder / "evil_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evil-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return {"PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(folder)) if p)}


def test_rules_lists_broken_plugins(sandbox):
    env = install_plugin(sandbox.root / "site")
    done = sandbox.run("rules", env=env)
    assert done.returncode == 0, done.stderr
    assert "GF001" in done.stdout and "XYZ001  broken-plugin" in done.stdout and "GF900  broken-plugin" in done.stdout


def test_commands_run_the_other_rules_and_say_so_in_one_line_per_plugin(sandbox):
    env = install_plugin(sandbox.root / "site")
    onnx.save(onnx.parser.parse_model(HEALTHY), sandbox.cwd / "m.onnx")
    done = sandbox.run("check", "m.onnx", "--isolated", env=env)
    assert done.returncode == 0, done.stderr
    warnings = done.stderr.strip().splitlines()
    assert len(warnings) == 4 and all(w.startswith("graphfix: warning: plugin rule ") for w in warnings), warnings
    assert "m.onnx: no findings" in done.stdout


def test_naming_a_broken_plugin_is_a_usage_error(sandbox):
    env = install_plugin(sandbox.root / "site")
    onnx.save(onnx.parser.parse_model(HEALTHY), sandbox.cwd / "m.onnx")
    done = sandbox.run("diagnose", "--static", "m.onnx", "--only", "XYZ001", env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "XYZ001 is not loaded" in done.stderr
