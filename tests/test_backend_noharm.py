"""No harm: for every ONNX backend test model onnxruntime runs correctly, `repair` keeps the reference outputs
and does not refuse the model. A fixed sample always runs; the full set is marked slow (CI runs it). The
symbolic variant below runs a sample always, a wider one in CI, and all of it with GRAPHFIX_FULL_NOHARM=1.

The node tests run twice: as they come (static shapes), and with their input dims made symbolic, as a dynamic
export declares them (issue 14: rules that reason about export-time sizes must not touch these either)."""

from __future__ import annotations

import functools
import glob
import os
import warnings
from collections import Counter
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
SYMBOLIC_SAMPLE_EVERY = 150  # the symbolic node tests validate slower (the validator probes each dim apart)
SYMBOLIC_WIDER_EVERY = 50  # CI's slow run; the whole set (~1,850 models) is run by hand with FULL_SYMBOLIC set
FULL_SYMBOLIC = "GRAPHFIX_FULL_NOHARM"


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


def symbolic(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every input dim a dim_param of its own (`in0_d1`), the outputs' dims unnamed. Kept static:
    the length of a 1-D integer input (a shape, sizes, starts or repeats vector: its length is another tensor's
    rank, fixed in every real model, and onnx's Resize inference needs it to tell `sizes` from an absent input),
    and a dim of 0 (an empty tensor is how an optional input is left out)."""
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    for k, value in enumerate(dynamic.graph.input):
        tensor = value.type.tensor_type
        vector = len(tensor.shape.dim) == 1 and tensor.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
        for axis, dim in enumerate(tensor.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0 and not vector:
                dim.dim_param = f"in{k}_d{axis}"  # replaces dim_value (a oneof)
    for value in dynamic.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            dim.Clear()
    return dynamic


@functools.cache
def symbolic_node_cases() -> list[Case]:
    return [Case(c.name + "[symbolic]", symbolic(c.model), c.inputs, c.outputs, c.rtol, c.atol) for c in node_cases()
            if symbolic(c.model) != c.model]


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


def symbolic_outcome(case: Case, tmp_path, rules) -> str | None:
    """What `repair` did to a node test with symbolic dims: None when ORT cannot run it correctly (out of scope),
    else `unchanged`, `repaired`, `refused` (validation failed, nothing written) or `harm: why`.

    Only changed outputs are harm. Distinct names per axis untie dims an op needs equal (LayerNormalization's X
    and Scale), so the validator finds no probe size where the model runs and refuses to write a harmless fix (a
    dead node removed): nothing is written, and the rejected candidate must still reproduce the outputs."""
    if not all(isinstance(x, np.ndarray) for x in case.inputs + case.outputs):
        return None
    reference = ort_outputs(case.model, case.inputs)
    if reference is None or not matches(reference, case.outputs, case):
        return None
    path = tmp_path / (case.name.replace("/", "_").replace("[", "_").replace("]", "") + ".onnx")
    onnx.save(case.model, path)
    try:
        result = repair_model(load_model(path), None, RepairOptions(rules=rules))
    except InputError as exc:
        return f"harm: refused at load: {exc}"
    outputs = ort_outputs(result.model, case.inputs)
    if outputs is None or not matches(outputs, case.outputs, case):
        which = "rejected candidate" if result.status == "failed" else f"{result.status} model"
        return f"harm: the {which} no longer reproduces the reference outputs ({[a.rule for a in result.applied]})"
    return "refused" if result.status == "failed" else result.status


def check_symbolic(cases: list[Case], tmp_path) -> None:
    rules, _ = load_rules()
    outcomes = {case.name: symbolic_outcome(case, tmp_path, rules) for case in cases}
    counts = Counter(o.split(":")[0] for o in outcomes.values() if o)
    print(f"symbolic node tests: {len(cases)} models, {sum(counts.values())} run correctly by onnxruntime:",
          dict(counts))
    harmed = {name: o for name, o in outcomes.items() if o and o.startswith("harm")}
    assert not harmed, "\n".join(f"{name}: {why}" for name, why in harmed.items())
    assert counts["unchanged"] + counts["repaired"] > len(cases) // 2  # the check ran on most of them


def test_symbolic_dims_keep_what_the_op_needs():
    resize = next(c for c in node_cases() if c.name == "test_resize_upsample_sizes_nearest")
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in symbolic(resize.model).graph.input}
    assert dims == {"X": ["in0_d0", "in0_d1", "in0_d2", "in0_d3"], "sizes": [4]}
    assert all(not d.dim_value and not d.dim_param for o in symbolic(resize.model).graph.output
               for d in o.type.tensor_type.shape.dim)
    assert matches(ort_outputs(symbolic(resize.model), resize.inputs), resize.outputs, resize)


def test_no_harm_on_a_sample_of_the_symbolic_node_tests(tmp_path):
    sample = symbolic_node_cases()[::SYMBOLIC_SAMPLE_EVERY]
    assert len(sample) >= 10
    check_symbolic(sample, tmp_path)


@pytest.mark.slow
def test_no_harm_on_a_wider_sample_of_the_symbolic_node_tests(tmp_path):
    check_symbolic(symbolic_node_cases()[SYMBOLIC_SAMPLE_EVERY // 2::SYMBOLIC_WIDER_EVERY], tmp_path)


@pytest.mark.skipif(not os.environ.get(FULL_SYMBOLIC), reason=f"about an hour on 2 cores: set {FULL_SYMBOLIC}=1")
def test_no_harm_on_every_symbolic_node_test(tmp_path):
    check_symbolic(symbolic_node_cases(), tmp_path)
