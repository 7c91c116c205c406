"""torchvision detectors exported as users export them: Faster R-CNN (MobileNetV3 320 FPN), RetinaNet, Mask R-CNN
and Keypoint R-CNN, random weights, TorchScript exporter, dynamic image height and width.

They run in onnxruntime and match PyTorch at every size, so graphfix must find no error in them: statically
(symbolic shape inference on these graphs would spend minutes in sympy without its time bound), with runtime
probing, through `repair` (exit 0, model unchanged) and `check`. Each command's time is printed; the 60 s
figure is recorded by benchmarks/run.py, not asserted here. Exports are made once per session (a few seconds each).
"""

from __future__ import annotations

import importlib.util
import time
import warnings

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import graphfix
from graphfix.cli import cli
from graphfix.core.rule import Severity

pytest.importorskip("torch")
if importlib.util.find_spec("torchvision") is None:  # imported by the fixture, after it registers the ops
    pytest.skip("torchvision is not installed", allow_module_level=True)

from fixtures.torchvision_models import CHECK_SIZES, DETECTORS, EXPORT_SIZE, build, export, image

# pixels and heatmap logits (about 20) go through float32 reductions; mask edges are pasted in a scripted Loop
ATOL = {"boxes": 0.05, "masks": 0.02, "keypoints": 0.05, "keypoints_scores": 0.05}
KEYPOINT_FLIPS = 0.02


def detections_differ(got: list[np.ndarray], want: list[np.ndarray], names: list[str]) -> str:
    """'' when onnxruntime's detections match PyTorch's (tied ones in either order, each output within its
    tolerance), else what differs. The suite-wide guard compares the detectors' repairs with it too."""
    got = _tied_in_torch_order(names, got, want)
    for output, a, b in zip(names, got, want, strict=True):
        if a.shape != b.shape:
            return f"{output} has shape {list(a.shape)}, PyTorch {list(b.shape)}"
        close = np.isclose(a, b, atol=ATOL.get(output, 2e-3), rtol=1e-3)
        # a keypoint is the argmax of a random heatmap: float noise may move it to a near-equal peak (its score, the
        # max itself, must still agree)
        allowed = int(KEYPOINT_FLIPS * close.size) if output == "keypoints" else 0
        if np.count_nonzero(~close) > allowed:
            return f"{output} differs from PyTorch by up to {np.abs(a - b).max():.3g}"
    return ""


pytestmark = [pytest.mark.slow, pytest.mark.torch, pytest.mark.repair_guard(compare=detections_differ)]


@pytest.fixture(scope="session")
def detectors(tmp_path_factory):
    """name -> (Detector, path of its export), exported once per session."""
    folder = tmp_path_factory.mktemp("torchvision")
    made = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python values in torchvision's code
        for name in DETECTORS:
            detector = build(name)
            made[name] = (detector, export(detector, folder / f"{name}.onnx"))
    return made


def _timed(what: str, name: str, call):
    start = time.perf_counter()
    result = call()
    print(f"{name}: {what} {time.perf_counter() - start:.1f} s")
    return result


def _errors(findings) -> list[str]:
    return [f"{f.rule}: {f.message}" for f in findings if f.severity is Severity.ERROR]


@pytest.mark.parametrize("name", DETECTORS)
def test_export_matches_pytorch_at_several_sizes(detectors, name):
    detector, path = detectors[name]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in (EXPORT_SIZE, *CHECK_SIZES):
        picture = image(*size, seed=1)
        got = session.run(None, {"images": picture.numpy()})
        want = detector(picture)
        assert got[0].shape[0] > 0, "random weights must still detect something, or the comparison is empty"
        difference = detections_differ(got, want, list(detector.outputs))
        assert not difference, f"{name} at {size}: {difference}"


def _tied_in_torch_order(outputs, got, want) -> list[np.ndarray]:
    """onnxruntime's detections, those whose scores tie in PyTorch (random weights saturate many at 1.0) put in
    PyTorch's order: non-maximum suppression may return tied detections either way. Any other difference in order
    still fails the comparison."""
    names = list(outputs)
    boxes, scores = names.index("boxes"), names.index("scores")
    if got[boxes].shape != want[boxes].shape:
        return got
    order, free = [], set(range(len(want[boxes])))
    for i, box in enumerate(got[boxes]):
        tied = [j for j in sorted(free) if abs(want[scores][j] - want[scores][i]) <= 1e-6]
        match = next((j for j in tied if np.allclose(want[boxes][j], box, atol=2e-3, rtol=1e-3)), i)
        order.append(match)
        free.discard(match)
    if sorted(order) != list(range(len(order))):
        return got
    inverse = np.argsort(order)
    return [value[inverse] if np.ndim(value) and len(value) == len(order) else value for value in got]


@pytest.mark.parametrize("name", DETECTORS)
def test_static_diagnosis_has_no_error(detectors, name):
    _, path = detectors[name]
    findings = _timed("diagnose --static", name, lambda: graphfix.diagnose(path, static=True))
    assert not _errors(findings)


@pytest.mark.parametrize("name", DETECTORS)
def test_runtime_diagnosis_has_no_error(detectors, name):
    _, path = detectors[name]
    findings = _timed("diagnose", name, lambda: graphfix.diagnose(path))
    assert not _errors(findings)


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize("command", ["repair", "check"])
def test_commands_exit_zero(detectors, name, command, tmp_path):
    _, path = detectors[name]
    args = [command, str(path)] + (["-o", str(tmp_path / "out.onnx")] if command == "repair" else [])
    result = _timed(command, name, lambda: CliRunner().invoke(cli, args))
    assert result.exit_code == 0, result.output
    if command == "repair":
        assert "unchanged" in result.output, result.output
