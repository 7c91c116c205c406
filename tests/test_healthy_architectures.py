"""No harm on healthy exports of real architectures: BERT, Llama with grouped-query attention (default SDPA and
eager attention, whose repeat_kv is an expand + reshape) and HuBERT, built from tiny transformers configs with
random weights and exported by both exporters (TorchScript at opset 17, dynamo at its default opset).

`diagnose` must report no error-level finding (statically, also with `--trace-shape` naming the export shape, and
with runtime probing), and `repair` must keep the outputs (equal to the original export's and to the PyTorch
module's) at three input sizes. Each (architecture, exporter) is exported once per session; the exports take
most of the file's minute, so it is marked slow (CI runs it).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphfix

pytest.importorskip("torch")
pytest.importorskip("transformers")

from arch_models import ARCHITECTURES, EXPORTERS, NOT_EXPORTABLE, build, export

pytestmark = pytest.mark.slow

CASES = [(arch, exporter) for arch in ARCHITECTURES for exporter in EXPORTERS if (arch, exporter) not in NOT_EXPORTABLE]
TORCH_ATOL = 1e-4


@pytest.fixture(scope="session")
def architectures():
    """name -> Arch, built once (torch.manual_seed(0) each)."""
    return {name: build(name) for name in ARCHITECTURES}


@pytest.fixture(scope="session")
def exported(tmp_path_factory, architectures):
    """exported(arch, exporter) -> path of the ONNX file, exported on first use and cached for the session."""
    folder = tmp_path_factory.mktemp("architectures")
    cache = {}

    def get(arch: str, exporter: str):
        if (arch, exporter) not in cache:
            path = folder / f"{arch}_{exporter}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export(architectures[arch], path, exporter)
            cache[arch, exporter] = path
        return cache[arch, exporter]

    return get


def errors(findings) -> list:
    return [f for f in findings if f.severity.value == "error"]


def describe(findings) -> str:
    return "\n".join(f"{f.rule} {f.severity.value} nodes={f.nodes[:4]} {f.message}" for f in findings) or "(none)"


def export_shapes(model) -> dict[str, tuple[int, ...]]:
    """The `--trace-shape` a user would pass: each input's shape at export time."""
    return {name: tuple(tensor.shape) for name, tensor in zip(model.input_names, model.example(), strict=True)}


def run_ort(path, feeds) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _at_time(vi: onnx.ValueInfoProto, time: int) -> tuple:
    """The input's shape with its batch free, its first other dynamic dim at `time`, the rest as declared (a
    static dim its number, a dynamic one free): `--shape` takes the input's full rank."""
    dims, timed = [], False
    for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif axis > 0 and not timed:
            dims.append(time)
            timed = True
        else:
            dims.append(None)
    return tuple(dims)


@pytest.mark.parametrize("traced", [False, True], ids=["plain", "trace-shape"])
@pytest.mark.parametrize(("arch", "exporter"), CASES)
def test_static_diagnose_finds_no_error(exported, architectures, arch, exporter, traced):
    """Also with `--trace-shape` naming the export-time shape: (2, 8) makes time equal the head size and batch
    the number of KV heads and layers, as export sizes often do (Llama exported at 64 tokens, head size 64)."""
    trace = export_shapes(architectures[arch]) if traced else None
    findings = graphfix.diagnose(exported(arch, exporter), static=True, trace_shapes=trace)
    assert not errors(findings), f"{arch}/{exporter} trace={traced}: healthy export flagged:\n{describe(findings)}"


@pytest.mark.parametrize(("arch", "exporter"), CASES)
def test_runtime_diagnose_finds_no_error(exported, arch, exporter):
    try:
        from graphfix.validate import probe  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"runtime probing (graphfix.validate) is not available: {exc}")
    findings = graphfix.diagnose(exported(arch, exporter))
    assert not errors(findings), f"{arch}/{exporter}: healthy export flagged at runtime:\n{describe(findings)}"


@pytest.mark.parametrize(("arch", "exporter"), CASES)
def test_runtime_diagnose_at_deployment_length_finds_no_error(exported, architectures, arch, exporter):
    """As `graphfix diagnose --shape NAME=Bx<time>`: batch free, time a length the model is meant for."""
    try:
        from graphfix.validate import ValidationOptions
    except ImportError as exc:
        pytest.skip(f"runtime probing (graphfix.validate) is not available: {exc}")
    model, path = architectures[arch], exported(arch, exporter)
    time = model.sizes[1][1]
    options = ValidationOptions(shapes={vi.name: _at_time(vi, time) for vi in onnx.load(path).graph.input
                                        if vi.name in model.input_names})
    findings = graphfix.diagnose(path, validation=options)
    assert not errors(findings), f"{arch}/{exporter} at time={time}: healthy export flagged:\n{describe(findings)}"


@pytest.mark.parametrize("traced", [False, True], ids=["plain", "trace-shape"])
@pytest.mark.parametrize(("arch", "exporter"), CASES)
def test_repair_keeps_outputs(exported, architectures, tmp_path, arch, exporter, traced):
    source = exported(arch, exporter)
    out = tmp_path / "out.onnx"
    trace = export_shapes(architectures[arch]) if traced else None
    result = graphfix.repair(source, output=out, trace_shapes=trace)
    applied = "\n".join(f"{a.to_json()}" for a in result.applied) or "(none)"
    assert result.status in ("unchanged", "repaired"), (
        f"{arch}/{exporter}: repair {result.status} ({result.error}); applied:\n{applied}\n"
        f"findings before:\n{describe(result.before.findings)}"
    )
    assert out.exists(), f"{arch}/{exporter}: repair wrote nothing ({result.status}, {result.notes})"
    if result.status == "unchanged":
        assert out.read_bytes() == source.read_bytes(), f"{arch}/{exporter}: 'unchanged' but the file differs"
    else:
        onnx.checker.check_model(onnx.load(out), full_check=True)
    model = architectures[arch]
    for batch, time in model.sizes:
        feeds = model.make_inputs(batch, time)
        want = run_ort(source, feeds)
        got = run_ort(out, feeds)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape, f"{arch}/{exporter} at {(batch, time)}: applied:\n{applied}"
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{arch}/{exporter} at {(batch, time)}; applied:\n{applied}")
        np.testing.assert_allclose(got[0], model.torch_outputs(feeds), rtol=0, atol=TORCH_ATOL,
                                   err_msg=f"{arch}/{exporter} vs PyTorch at {(batch, time)}")
