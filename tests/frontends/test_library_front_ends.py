"""Front ends from the libraries' own code (#22): timm ConvNeXt, ViT (dynamic_img_size), MobileViT; speechbrain
ECAPA-TDNN and Conformer (relative or rotary positions); openai-whisper's AudioEncoder; asteroid ConvTasNet. Small
configs, random weights, exported with dynamic axes (tests/fixtures/library_models.py), and every graphfix command
run on them through the console script, as a user would, each bounded by a 60 s timeout.

- a healthy export gets no error finding and `repair` exits 0, writing a model that matches PyTorch at three sizes
  inside its domain (batch 1, and a length longer than the export length where the model has more than one);
- a broken export gets an error finding, and is repaired by default and matches PyTorch the same way: ECAPA and
  the Conformer called with relative lengths (`wav_lens`), whose masks speechbrain's `length_to_mask` builds by
  expanding `arange(T)` to `len(lengths)`, the export batch. The rotary Conformer besides, whose rotation
  positions are computed while tracing for 64 (the next power of two at 40 frames) and cut to the length, is
  repaired with --unsafe-fixes and by graphfix.export: past 64 a module may continue the positions (speechbrain
  does: checked at 80 frames), cap them or change its frequencies (dynamic NTK scaling computes its cache for
  max(T, 64)), and the graph does not say which. speechbrain's wav2vec2 EncoderWrapper masks by
  `length_to_mask(round(wav_lens * T))` without `max_len`, so the width is `.item()` of the lengths' maximum:
  found where attention reshapes the mask with the
  traced length, but an arange the graph does not tell from a clamped one, so it is repaired with --unsafe-fixes
  and by graphfix.export (the module settles it), not by default. MobileViT is not repaired by `graphfix repair`, a
  strict xfail: its unfold bakes the patch counts of height and width, and a block with a fixed grid of patches
  that grow with the input leaves the same graph (test_patch_grid_ambiguity.py), so which constants vary is not
  determined by the graph. graphfix.export settles it with traces of the module at other sizes
  (graphfix.exporting.refit).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run

pytest.importorskip("torch")

from fixtures.library_models import BUILDERS, build, export, installed

pytestmark = [pytest.mark.torch, pytest.mark.slow]

HEALTHY = ("convnext", "vit", "whisper", "convtasnet")
BROKEN = ("ecapa", "conformer", "conformer-rope", "mobilevit", "w2v-encoder")
UNREPAIRED = {"mobilevit": "its unfold bakes the patch counts, and the graph does not say whether the counts or the "
                           "patch sizes vary (test_patch_grid_ambiguity.py: a fixed grid leaves the same graph)",
              "w2v-encoder": "its mask's width is a folded arange(T), which the graph does not tell from a clamped "
                             "arange (test_gf006_pinned_width.py): repaired with --unsafe-fixes, or by graphfix.export",
              "conformer-rope": "its rotary positions are folded for 64 frames; past them the graph does not say "
                                "whether they continue, stop or change frequency (dynamic NTK): repaired with "
                                "--unsafe-fixes, or by graphfix.export"}
# the broken ones the static pass finds (MobileViT's reshapes fail only at run time)
STATIC = ("ecapa", "conformer", "conformer-rope", "w2v-encoder")
# unrepaired by default; the module (graphfix.export) or --unsafe-fixes settles it
UNSAFE_ONLY = ("w2v-encoder", "conformer-rope")
NAMES = tuple(n for n in BUILDERS if installed(n))
TIMEOUT_S = 60  # a bound on each command per model, not a timed assertion
GRAPHFIX = Path(sys.executable).parent / "graphfix"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (case, path of its export), for the cases whose library is installed."""
    folder = tmp_path_factory.mktemp("front_ends")
    cases = {}
    for name in NAMES:
        case = build(name)
        cases[name] = (case, export(case, folder / f"{name}.onnx"))
    return cases


def graphfix(*args: str, models: int = 1) -> tuple[subprocess.CompletedProcess, float]:
    """The console script, bounded by TIMEOUT_S per model; its result and its wall time."""
    start = time.perf_counter()
    proc = subprocess.run([str(GRAPHFIX), *args], capture_output=True, text=True, timeout=TIMEOUT_S * models)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc, time.perf_counter() - start


def errors(report: dict) -> list[str]:
    return [f"{f['rule']} {f['message'][:120]}" for f in report["findings"] if f["severity"] == "error"]


@pytest.mark.parametrize("command", [("diagnose",), ("diagnose", "--static"), ("check",)])
def test_diagnosis_finds_no_error_in_healthy_front_ends_and_reports_the_broken(exported, command):
    if not exported:
        pytest.skip("none of the libraries is installed (pip install --no-deps -r requirements-nodeps.txt)")
    paths = {str(path): name for name, (_, path) in exported.items()}
    proc, _ = graphfix(*command, "--format", "json", *paths, models=len(paths))
    assert proc.returncode in (0, 1), proc.stderr
    reports = {paths[m["path"]]: m for m in json.loads(proc.stdout)["models"]}
    assert set(reports) == set(paths.values())
    for name, report in reports.items():
        assert report["error"] is None, (name, report["error"])
        if name in HEALTHY:
            assert not errors(report), (name, errors(report))
        elif "--static" not in command or name in STATIC:
            assert errors(report), name
    found = BROKEN if "--static" not in command else STATIC
    assert proc.returncode == int(any(name in found for name in reports))


@pytest.fixture(scope="module")
def repaired(exported, tmp_path_factory):
    """`graphfix repair --output-dir` on every export but the unrepaired ones, in one run; name -> its report."""
    names = [n for n in exported if n not in UNREPAIRED]
    paths = {str(exported[n][1]): n for n in names}
    folder = tmp_path_factory.mktemp("repaired")
    proc, _ = graphfix("repair", "--format", "json", "--output-dir", str(folder), *paths, models=len(paths))
    reports = {paths[m["path"]]: m for m in json.loads(proc.stdout)["models"]}
    return proc, reports


@pytest.mark.parametrize("name", [n for n in NAMES if n not in UNREPAIRED])
def test_repair_exits_0_and_matches_pytorch(exported, repaired, name):
    proc, reports = repaired
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    report = reports[name]
    assert report["status"] == ("repaired" if name in BROKEN else "unchanged"), report
    case, _ = exported[name]
    for batch, length in (case.export_size, *case.sizes):
        got = run(report["output"], case.feeds(batch, length))
        for g, want in zip(got, case.expected(batch, length), strict=True):
            np.testing.assert_allclose(g, want, rtol=1e-3, atol=1e-4, err_msg=f"{name} at {(batch, length)}")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=UNREPAIRED[n], strict=True))
                                  for n in NAMES if n in UNREPAIRED])
def test_unrepaired_front_end_is_repaired_and_matches_pytorch(exported, tmp_path, name):
    case, path = exported[name]
    fixed = tmp_path / f"{name}_fixed.onnx"
    proc, _ = graphfix("repair", str(path), "-o", str(fixed))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for batch, length in (case.export_size, *case.sizes):
        for g, want in zip(run(str(fixed), case.feeds(batch, length)), case.expected(batch, length), strict=True):
            np.testing.assert_allclose(g, want, rtol=1e-3, atol=1e-4, err_msg=f"{name} at {(batch, length)}")


@pytest.mark.parametrize("name", [n for n in NAMES if n in UNSAFE_ONLY])
def test_unsafe_only_front_end_is_repaired_with_unsafe_fixes_and_by_the_export_companion(exported, tmp_path, name):
    """The default repair names the unsafe fix and writes nothing; `--unsafe-fixes` writes a model that matches
    PyTorch at three sizes; `graphfix.export` tries it only where the safe repair fails, and keeps it because it
    matches the module at those sizes."""
    import torch

    from graphfix import export as export_repaired

    case, path = exported[name]
    proc, _ = graphfix("repair", str(path), "-o", str(tmp_path / "default.onnx"))
    assert proc.returncode == 1 and not (tmp_path / "default.onnx").exists(), proc.stdout + proc.stderr
    assert "(unsafe)" in graphfix("diagnose", str(path))[0].stdout
    proc, _ = graphfix("repair", "--unsafe-fixes", str(path), "-o", str(tmp_path / "unsafe.onnx"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sizes = (case.export_size, *case.sizes)
    for batch, length in sizes:
        got = run(str(tmp_path / "unsafe.onnx"), case.feeds(batch, length))
        for g, want in zip(got, case.expected(batch, length), strict=True):
            np.testing.assert_allclose(g, want, rtol=1e-3, atol=1e-4, err_msg=f"{name} at {(batch, length)}")
    inputs = [tuple(torch.from_numpy(a) for a in case.inputs(*size)) for size in sizes]
    report = export_repaired(case.module, inputs[0], tmp_path / "exported.onnx", input_names=list(case.names[:2]),
                             output_names=list(case.names[2:]), dynamic_axes=case.axes, opset_version=17,
                             probe_args=inputs[1:])
    assert report.ok and len(report.checks) == len(sizes), report.summary()


@pytest.mark.parametrize("name", [n for n in NAMES if n in UNREPAIRED and n not in UNSAFE_ONLY])
def test_diagnosis_of_a_front_end_the_graph_leaves_undetermined_names_the_export_companion(exported, name):
    """No fix the graph determines: the error says where one comes from (the module, traced at other sizes)."""
    proc, _ = graphfix("diagnose", "--format", "json", str(exported[name][1]))
    (finding,) = [f for f in json.loads(proc.stdout)["models"][0]["findings"] if f["severity"] == "error"]
    assert finding["rule"] == "GF004" and "graphfix.export(module" in finding["hint"], finding


@pytest.mark.parametrize("name", [n for n in NAMES if n in UNREPAIRED and n not in UNSAFE_ONLY])
def test_front_end_the_graph_leaves_undetermined_is_repaired_by_the_export_companion(exported, tmp_path, name):
    """MobileViT's patch counts: `graphfix repair` cannot tell them from patch sizes (the strict xfail above);
    `graphfix.export` traces the module at other sizes, sees which constants move, and rebuilds them. Checked by
    onnxruntime against the module at the case's sizes, which no trace used."""
    import torch

    from graphfix import export as export_repaired

    case, _ = exported[name]
    sizes = (case.export_size, *case.sizes)
    inputs = [tuple(torch.from_numpy(a) for a in case.inputs(*size)) for size in sizes]
    written = tmp_path / "exported.onnx"
    report = export_repaired(case.module, inputs[0], written, input_names=list(case.names[:len(inputs[0])]),
                             output_names=list(case.names[len(inputs[0]):]), dynamic_axes=case.axes,
                             probe_args=inputs[1:])
    assert report.ok and report.status == "repaired" and report.refitted, report.summary()
    for batch, length in sizes:
        for g, want in zip(run(str(written), case.feeds(batch, length)), case.expected(batch, length), strict=True):
            np.testing.assert_allclose(g, want, rtol=1e-3, atol=1e-4, err_msg=f"{name} at {(batch, length)}")


@pytest.mark.parametrize("name", [n for n in NAMES if n in UNREPAIRED and n not in UNSAFE_ONLY])
def test_default_probes_show_the_branch_the_trace_froze_and_keep_the_better_file(exported, tmp_path, name):
    """Without probe_args, graphfix.export also checks sizes off the example's lattice: at 33x57 pixels MobileViT
    interpolates, a branch its trace at 32x48 froze, so no file from that trace matches there and the report is
    not ok. The refitted file still matches wherever the unrefitted one did and more, so it is the one written:
    it matches PyTorch at the case's sizes, multiples of 8."""
    import torch

    from graphfix import export as export_repaired

    case, _ = exported[name]
    written = tmp_path / "exported.onnx"
    example = tuple(torch.from_numpy(a) for a in case.inputs(*case.export_size))
    report = export_repaired(case.module, example, written, input_names=list(case.names[:len(example)]),
                             output_names=list(case.names[len(example):]), dynamic_axes=case.axes)
    assert not report.ok and report.refitted, report.summary()
    for batch, length in case.sizes:
        for g, want in zip(run(str(written), case.feeds(batch, length)), case.expected(batch, length), strict=True):
            np.testing.assert_allclose(g, want, rtol=1e-3, atol=1e-4, err_msg=f"{name} at {(batch, length)}")


def test_sizes_cover_batch_1_and_a_longer_length(exported):
    """The sizes each case is checked at: batch 1, and a longer length unless the model accepts only one."""
    for name, (case, _) in exported.items():
        assert any(b == 1 for b, _ in case.sizes), name
        longer = any(length > case.export_size[1] for _, length in case.sizes)
        assert longer or name == "whisper", name  # whisper's encoder asserts its input is exactly 2 * n_ctx frames
