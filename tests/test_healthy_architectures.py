"""No harm on healthy exports of real architectures: BERT, Llama (grouped-query attention) and HuBERT, built from
tiny transformers configs with random weights and exported by both exporters.

`diagnose` must report no error-level finding, and `repair` must keep the model's outputs (equal to the original
export's and to the PyTorch module's) at three input sizes. Each (architecture, exporter) is exported once per
session. Slow: about a minute of exporting, so CI runs it with the slow tests.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphfix
from arch_models import ARCHITECTURES, EXPORTERS, build, export

pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

CASES = [(arch, exporter) for arch in ARCHITECTURES for exporter in EXPORTERS]
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


def run_ort(path, feeds) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize(("arch", "exporter"), CASES)
def test_static_diagnose_finds_no_error(exported, arch, exporter):
    findings = graphfix.diagnose(exported(arch, exporter), static=True)
    assert not errors(findings), f"{arch}/{exporter}: healthy export flagged:\n{describe(findings)}"


@pytest.mark.parametrize(("arch", "exporter"), CASES)
def test_runtime_diagnose_finds_no_error(exported, arch, exporter):
    try:
        from graphfix.validate import probe  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"runtime probing (graphfix.validate) is not available: {exc}")
    findings = graphfix.diagnose(exported(arch, exporter))
    assert not errors(findings), f"{arch}/{exporter}: healthy export flagged at runtime:\n{describe(findings)}"


@pytest.mark.parametrize(("arch", "exporter"), CASES)
def test_repair_keeps_outputs(exported, architectures, tmp_path, arch, exporter):
    source = exported(arch, exporter)
    out = tmp_path / "out.onnx"
    result = graphfix.repair(source, output=out)
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
