"""`graphfix set-shape`: free the dims of a fixed-size export (stale value_info included), fix dims for a
deployment, share names between inputs; refusals; a shape the graph cannot run at is never written."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import parse, run

from graphfix.analysis.shapes import value_info_shape
from graphfix.cli import cli
from graphfix.cli import set_shape as set_shape_cli
from graphfix.core.errors import UsageError
from graphfix.io.loading import load_model
from graphfix.surgery.set_shape import parse_named_dims, set_shape

if "set-shape" not in cli.commands:  # until the lead registers it in graphfix/cli/__init__.py
    cli.add_command(set_shape_cli.command)


class Frontend(torch.nn.Module):
    """Per-frame projection and normalisation: nothing in it depends on the batch or frame count."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 24)
        self.norm = torch.nn.LayerNorm(24)

    def forward(self, audio):
        return self.norm(torch.relu(self.proj(audio)))


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module", params=[13, 17])
def fixed_export(request, tmp_path_factory):
    """Exported without dynamic axes: inputs, outputs and value_info all say [1, 100, ...]."""
    torch.manual_seed(0)
    module = Frontend().eval()
    path = tmp_path_factory.mktemp(f"fixed{request.param}") / "model.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, 100, 16),), str(path), dynamo=False, opset_version=request.param,
                          input_names=["audio"], output_names=["hidden"])
    model = onnx.shape_inference.infer_shapes(onnx.load(path))  # stale value_info, as many exports carry
    onnx.save(model, path)
    return module, path


def dims(vi) -> list:
    return value_info_shape(vi)


def test_free_dims_of_a_fixed_export_matches_pytorch(fixed_export, tmp_path):
    module, path = fixed_export
    assert all(dims(vi)[:2] == [1, 100] for vi in onnx.load(path).graph.value_info if len(dims(vi)) == 3)
    result = set_shape(load_model(path), {"audio": parse_named_dims("Bx?x16")}, tmp_path / "dynamic.onnx")
    assert result.status == "written", result.error
    model = onnx.load(tmp_path / "dynamic.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert dims(model.graph.input[0])[0] == "B" and dims(model.graph.input[0])[2] == 16
    assert dims(model.graph.output[0])[0] == "B" and dims(model.graph.output[0])[2] == 24
    assert not any(d == 100 for vi in model.graph.value_info for d in dims(vi) or [])  # stale value_info gone
    for batch, frames in [(1, 100), (2, 37), (5, 3)]:
        x = np.random.default_rng(frames).standard_normal((batch, frames, 16)).astype(np.float32)
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(run(model, {"audio": x})[0], expected, rtol=1e-4, atol=1e-5)
        if (batch, frames) != (1, 100):
            with pytest.raises(Exception, match=r"[Ii]nvalid dimensions|Got invalid"):
                run(str(path), {"audio": x})  # the original refuses every other size


def test_fix_dims_round_trip(fixed_export, tmp_path):
    _, path = fixed_export
    set_shape(load_model(path), {"audio": ["batch", "frames", 16]}, tmp_path / "dyn.onnx")
    result = set_shape(load_model(tmp_path / "dyn.onnx"), {"audio": parse_named_dims("4x250x16")},
                       tmp_path / "fixed.onnx")
    assert result.status == "written", result.error
    model = onnx.load(tmp_path / "fixed.onnx")
    assert dims(model.graph.input[0]) == [4, 250, 16] and dims(model.graph.output[0]) == [4, 250, 24]
    assert result.checks == [{"sizes": {}, "ok": True, "original": "ran", "problems": []}]


BAKED = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 100] x) => (float[N, 10, 10] y) {
    shape = Constant<value = int64[3] {-1, 10, 10}>()  y = Reshape(x, shape)
}"""
SHARED = """<ir_version: 10, opset_import: ["" : 17]>
g (float[a, 8] x, float[b, 8] y) => (float[c, 8] z) { z = Add(x, y) }"""


def test_a_shape_the_graph_cannot_run_at_is_not_written(tmp_path):
    onnx.save(parse(BAKED), tmp_path / "baked.onnx")
    code, out, _ = invoke("set-shape", tmp_path / "baked.onnx", "--shape", "x=2x64", "-o", tmp_path / "out.onnx")
    assert code == 1 and "Reshape" in out and "nothing written" in out  # ORT refuses the fixed shape
    assert not (tmp_path / "out.onnx").exists()


def test_shared_names_bind_inputs_together(tmp_path):
    onnx.save(parse(SHARED), tmp_path / "shared.onnx")
    code, out, _ = invoke("set-shape", tmp_path / "shared.onnx", "--shape", "x=Nx8", "--shape", "y=Nx8",
                          "-o", tmp_path / "out.onnx")
    assert code == 0, out
    model = onnx.load(tmp_path / "out.onnx")
    assert [dims(vi) for vi in (*model.graph.input, *model.graph.output)] == [["N", 8], ["N", 8], ["N", 8]]


@pytest.mark.parametrize(("shape", "message"), [
    ("x=2x8x1", "3 dims given, the input has rank 2"),
    ("nope=2x8", "no such graph input"),
    ("x=2x-8", "bad shape"),
    ("x=0x8", "--shape x: dim 0 is 0; a fixed size is at least 1"),  # ONNX reads dim_value 0 as no size
    ("x", "expects NAME=VALUE"),
])
def test_usage_errors(tmp_path, shape, message):
    onnx.save(parse(SHARED), tmp_path / "shared.onnx")
    code, _, err = invoke("set-shape", tmp_path / "shared.onnx", "--shape", shape, "-o", tmp_path / "out.onnx")
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out.onnx").exists()


def test_parse_named_dims():
    assert parse_named_dims("1x16000") == [1, 16000]
    assert parse_named_dims("Bx?") == ["B", None]
    assert parse_named_dims("batchx?x80") == ["batch", None, 80]
    with pytest.raises(UsageError):
        parse_named_dims("1xx2")


def test_external_data_is_written_beside_the_output(fixed_export, tmp_path):
    module, path = fixed_export
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save_model(onnx.load(path), folder / "model.onnx", save_as_external_data=True, location="w.bin",
                    size_threshold=0)
    result = set_shape(load_model(folder / "model.onnx"), {"audio": ["B", "T", 16]}, tmp_path / "out.onnx")
    assert result.status == "written", result.error
    assert (tmp_path / "out.onnx.data").exists() and not (tmp_path / "w.bin").exists()
    x = np.random.default_rng(0).standard_normal((3, 7, 16)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(str(tmp_path / "out.onnx"), {"audio": x})[0], expected, rtol=1e-4, atol=1e-5)
