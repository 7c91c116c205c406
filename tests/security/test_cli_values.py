"""Values from the command line, pyproject.toml and the environment (#20 item 13): a value that is no number, no
size or no shape is a usage error — exit 2 and one line on stderr — never a traceback or an internal error."""

from __future__ import annotations

import onnx
import onnx.parser
import pytest

HEALTHY = '< ir_version: 8, opset_import: ["" : 17] > g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }'
DEEP = "a = " + "[" * 50_000 + "]" * 50_000 + "\n"
LONG = "9" * 5000  # past the 4300 digits CPython converts: a ValueError unless refused first


@pytest.mark.parametrize(
    ("args", "env", "toml", "says"),
    [
        (["--shape", "x=²x4"], {}, None, "bad shape '²x4'"),
        (["--trace-shape", "zz=2x4"], {}, None, "--trace-shape zz: no such graph input"),  # was ignored: helper 104
        (["--trace-shape", "x=2x4x3"], {}, None, "--trace-shape x: 3 dims given"),
        ([], {}, '[tool.graphfix.inputs."*.onnx"]\nshapes = { x = "²x4" }\n', "bad shape '²x4'"),
        (["--timeout", "1e300"], {}, None, "--timeout"),
        (["--timeout", "nan"], {}, None, "--timeout"),
        (["--max-probe-memory", "inf"], {}, None, "--max-probe-memory"),
        (["--max-probe-memory", "-5"], {}, None, "--max-probe-memory"),
        (["--rtol", "nan"], {}, None, "--rtol"),
        ([], {}, "[tool.graphfix]\natol = inf\n", "atol"),
        (["--jobs", "99999999999999999999"], {}, None, "--jobs"),
        ([], {"GRAPHFIX_MAX_RUN_SECONDS": "inf"}, None, "GRAPHFIX_MAX_RUN_SECONDS"),
        ([], {"GRAPHFIX_MAX_NODES": "²"}, None, "GRAPHFIX_MAX_NODES"),
        ([], {"GRAPHFIX_MAX_PROBE_MEMORY": "1e400"}, None, "GRAPHFIX_MAX_PROBE_MEMORY"),
        ([], {"GRAPHFIX_SHAPE_SECONDS": "nan"}, None, "GRAPHFIX_SHAPE_SECONDS"),
        ([], {"GRAPHFIX_MAX_MEMORY": "abc"}, None, "GRAPHFIX_MAX_MEMORY"),  # read in the worker: internal error
        ([], {"GRAPHFIX_MAX_MEMORY": "10"}, None, "GRAPHFIX_MAX_MEMORY"),  # too little to start one (helper 104)
        ([], {"GRAPHFIX_MAX_MEMORY": "90M"}, None, "GRAPHFIX_MAX_MEMORY"),  # still too little (helper 106)
        ([], {}, DEEP, "nested too deeply"),
        (["--jobs", LONG], {}, None, "--jobs"),
        (["--shape", f"x={LONG}x4"], {}, None, "bad shape"),
        ([], {"GRAPHFIX_MAX_NODES": LONG}, None, "GRAPHFIX_MAX_NODES"),
        ([], {}, f'[tool.graphfix.inputs."*.onnx"]\nshapes = {{ x = "{LONG}x4" }}\n', "bad shape"),
        ([], {}, f"[tool.graphfix]\nrtol = {LONG}\n", "thousands of digits"),
    ],
)
def test_a_bad_value_is_a_one_line_usage_error(sandbox, args, env, toml, says):
    onnx.save(onnx.parser.parse_model(HEALTHY), sandbox.cwd / "m.onnx")
    if toml is not None:
        (sandbox.cwd / "pyproject.toml").write_text(toml)
    done = sandbox.run("check", "m.onnx", *args, env=env)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "internal error" not in done.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["bench", "m.onnx", "--runs", "²"], "--runs"),
        (["bench", "m.onnx", "--runs", LONG], "--runs"),
        (["bench", "m.onnx", "--batch", "-4"], "--batch"),
        (["bench", "m.onnx", "--audio-seconds", "inf"], "--audio-seconds"),
        (["stream", "m.onnx", "--feedback", "y=x", "--steps", "1e9"], "--steps"),
        (["stream", "m.onnx", "--feedback", "y=x", "--latency-tolerance", "nan"], "--latency-tolerance"),
        # click's own errors were three lines (a usage line, a hint, the error; helper 104)
        (["repair", "m.onnx", "--bogus"], "No such option '--bogus'"),
        (["check", "m.onnx", "--format", "xml"], "'xml' is not one of"),
        (["repair"], "Missing argument"),
        (["nosuch", "m.onnx"], "No such command 'nosuch'"),
        (["--bogus", "diagnose", "m.onnx"], "No such option '--bogus'"),
        (["repair", "m.onnx", "-o", "newdir/"], "names a folder"),  # written as a file named newdir (helper 108)
        (["check", "m.onnx", "--output-file", "reports/"], "names a folder"),
    ],
)
def test_bench_and_stream_values_are_one_line_usage_errors(sandbox, args, says):
    onnx.save(onnx.parser.parse_model(HEALTHY), sandbox.cwd / "m.onnx")
    done = sandbox.run(*args)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_shared_parsers_take_ascii_numbers_only():
    from graphfix.core import values
    from graphfix.core.errors import UsageError

    assert values.byte_size("2G", "x") == 2 << 30 and values.byte_size("512mb", "x") == 512 << 20
    assert values.seconds("1.5", "x") == 1.5 and values.count("12", "x") == 12
    assert [values.dim(d, "x") for d in ("8", "?", "batch")] == [8, None, "batch"]
    for parse, text in [(values.count, "١٢"), (values.dim, "²"), (values.seconds, "inf"), (values.seconds, "0"),
                        (values.byte_size, "1e999"), (values.tolerance, "-1"), (values.count, "0"),
                        (values.count, LONG), (values.dim, LONG), (values.count, "0" * 5000 + "1")]:
        with pytest.raises(UsageError):
            parse(text, "x")


@pytest.mark.parametrize("size", ["100000000000", "9223372036854775807"])
def test_a_huge_export_size_is_judged_against_the_probe_budget_not_enumerated(sandbox, size):
    """Found by a review: the probe sizes were searched through a list of every size below the export size, so
    `--trace-shape x=100000000000x4` died of a MemoryError (an internal error) before the memory budget was asked."""
    onnx.save(onnx.parser.parse_model(HEALTHY), sandbox.cwd / "m.onnx")
    done = sandbox.run("diagnose", "m.onnx", "--trace-shape", f"x={size}x4", timeout=120)
    assert done.returncode == 1 and "memory budget" in done.stdout, done.stdout + done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr


def test_probe_values_are_drawn_a_block_at_a_time_as_one_draw():
    import numpy as np

    from graphfix.validate.inputs import NORMAL_BLOCK, _normal

    shape = (3, NORMAL_BLOCK // 2 + 1)
    got = _normal(shape, np.float32, np.random.default_rng(7))
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_array_equal(got, np.random.default_rng(7).standard_normal(shape).astype(np.float32))


def test_a_trace_shape_another_model_of_the_command_takes_is_no_typo(sandbox):
    """Helper 106: `diagnose a.onnx b.onnx --trace-shape x=2x4`, where only a.onnx has x, was refused whole (exit 2,
    nothing reported); as with --shape, a name one of several models lacks may be another's."""
    onnx.save(onnx.parser.parse_model(HEALTHY), sandbox.cwd / "a.onnx")
    onnx.save(onnx.parser.parse_model(HEALTHY.replace(" x)", " t)").replace("(x)", "(t)")), sandbox.cwd / "b.onnx")
    done = sandbox.run("diagnose", "a.onnx", "b.onnx", "--trace-shape", "x=2x4")
    assert done.returncode == 0 and "a.onnx" in done.stdout and "b.onnx" in done.stdout, done.stdout + done.stderr
    alone = sandbox.run("diagnose", "b.onnx", "--trace-shape", "x=2x4")
    assert alone.returncode == 2 and "--trace-shape x: no such graph input" in alone.stderr, alone.stderr
