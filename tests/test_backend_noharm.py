"""No harm: for every ONNX backend test model onnxruntime runs correctly, `repair` keeps the reference outputs
and does not refuse the model. A fixed sample always runs; the full set is marked slow (CI runs it)."""

from __future__ import annotations

import functools
import glob
import os
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from graphfix.core.errors import InputError
from graphfix.core.registry import load_rules
from graphfix.io.loading import load_model
from graphfix.pipeline.repair import RepairOptions, repair_model

DATA_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
DATA_FOLDERS = ("pytorch-converted", "pytorch-operator", "simple")
SAMPLE_EVERY = 40  # every 40th node case, plus every 8th data-folder model


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]
    rtol: float = 1e-3
    atol: float = 1e-7


@functools.cache
def node_cases() -> list[Case]:
    from onnx.backend.test.case.node import collect_testcases

    cases = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        collected = collect_testcases(None)
    for case in collected:
        inputs, outputs = case.data_sets[0]
        cases.append(Case(case.name, case.model, list(inputs), list(outputs), case.rtol, case.atol))
    return cases


def folder_cases() -> list[Case]:
    cases = []
    for folder in DATA_FOLDERS:
        for model_path in sorted(glob.glob(os.path.join(DATA_DIR, folder, "*", "model.onnx"))):
            data = os.path.join(os.path.dirname(model_path), "test_data_set_0")
            inputs = [_read_tensor(p) for p in sorted(glob.glob(os.path.join(data, "input_*.pb")))]
            outputs = [_read_tensor(p) for p in sorted(glob.glob(os.path.join(data, "output_*.pb")))]
            name = f"{folder}/{os.path.basename(os.path.dirname(model_path))}"
            cases.append(Case(name, onnx.load(model_path), inputs, outputs))
    return cases


def _read_tensor(path: str):
    tensor = onnx.TensorProto()
    with open(path, "rb") as f:
        tensor.ParseFromString(f.read())
    return numpy_helper.to_array(tensor)


def ort_outputs(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray] | None:
    """Outputs of onnxruntime's CPU run, or None when it cannot run the model."""
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # failures are answered with None, not printed
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        if len(names) != len(inputs):
            return None
        return session.run(None, dict(zip(names, inputs, strict=True)))
    except Exception:
        return None


def matches(actual: list, expected: list, case: Case) -> bool:
    if len(actual) != len(expected):
        return False
    for got, want in zip(actual, expected, strict=True):
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape:
            return False
        if want.dtype.kind in "fc" and not np.allclose(got, want, rtol=case.rtol, atol=case.atol, equal_nan=True):
            return False
        if want.dtype.kind not in "fc" and not np.array_equal(got, want):
            return False
    return True


def harm_done(case: Case, tmp_path, rules) -> str | None:
    """Why `repair` harmed a model ORT runs correctly; None when it did not (or ORT cannot run it)."""
    if not all(isinstance(x, np.ndarray) for x in case.inputs + case.outputs):
        return None  # sequences and optionals are not plain feeds
    reference = ort_outputs(case.model, case.inputs)
    if reference is None or not matches(reference, case.outputs, case):
        return None  # onnxruntime does not run it correctly: out of scope
    path = tmp_path / (case.name.replace("/", "_") + ".onnx")
    onnx.save(case.model, path)
    try:
        result = repair_model(load_model(path), None, RepairOptions(rules=rules))
    except InputError as exc:
        return f"refused at load: {exc}"
    if result.status == "failed":
        return f"repair failed: {result.error}"
    repaired = ort_outputs(result.model, case.inputs)
    if repaired is None or not matches(repaired, case.outputs, case):
        return "repaired model no longer reproduces the reference outputs"
    return None


def check_all(cases: list[Case], tmp_path) -> None:
    rules, _ = load_rules()
    harmed = {}
    for case in cases:
        problem = harm_done(case, tmp_path, rules)
        if problem:
            harmed[case.name] = problem
    assert not harmed, "\n".join(f"{name}: {why}" for name, why in harmed.items())


def test_harm_detector_notices_a_changed_output(tmp_path):
    """The check itself can fail: a case whose reference disagrees with the model is reported when ORT agrees
    with the reference only for the original graph."""
    case = node_cases()[0]
    wrong = Case(case.name, case.model, case.inputs, [o + 1 for o in case.outputs], case.rtol, case.atol)
    assert matches(ort_outputs(case.model, case.inputs), case.outputs, case)
    assert not matches(ort_outputs(case.model, case.inputs), wrong.outputs, wrong)


def test_no_harm_on_a_sample_of_the_backend_suite(tmp_path):
    sample = node_cases()[::SAMPLE_EVERY] + folder_cases()[::8]
    assert len(sample) > 40
    check_all(sample, tmp_path)


@pytest.mark.slow
def test_no_harm_on_the_full_backend_suite(tmp_path):
    check_all(node_cases() + folder_cases(), tmp_path)
