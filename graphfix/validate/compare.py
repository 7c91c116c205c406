"""Comparing outputs: numbers between two runs, and shapes of one run against symbolic shape inference."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import onnx

from graphfix.analysis.shapes import infer_shapes, skeleton, symbolic_shapes
from graphfix.core.recent import per_model
from graphfix.validate import dim_expr

log = logging.getLogger(__name__)


@dataclass
class OutputComparison:
    name: str
    ok: bool
    max_abs: float | None  # None when the values cannot be compared (shape or dtype differ)
    max_rel: float | None
    expected_shape: list[int]
    actual_shape: list[int]
    problem: str = ""  # one line when not ok

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "ok": self.ok,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "expected_shape": self.expected_shape,
            "actual_shape": self.actual_shape,
            "problem": self.problem,
        }


def compare_arrays(name: str, expected: np.ndarray, actual: np.ndarray, rtol: float, atol: float) -> OutputComparison:
    """Equal within `atol + rtol * |expected|` elementwise; NaN matches NaN, ±Inf match themselves."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    shapes = (list(expected.shape), list(actual.shape))
    if expected.shape != actual.shape:
        return OutputComparison(name, False, None, None, *shapes, f"shape {shapes[1]} instead of {shapes[0]}")
    if expected.dtype != actual.dtype:
        return OutputComparison(name, False, None, None, *shapes, f"dtype {actual.dtype} instead of {expected.dtype}")
    if expected.size == 0:
        return OutputComparison(name, True, 0.0, 0.0, *shapes)
    if not np.issubdtype(expected.dtype, np.number):
        same = bool(np.array_equal(expected, actual))
        return OutputComparison(name, same, float(not same), float(not same), *shapes, "" if same else "values differ")
    rtol, atol = _at_least_precision(expected.dtype, rtol, scaled_atol(expected, atol))
    exp64, act64 = expected.astype(np.float64), actual.astype(np.float64)
    same_special = (np.isnan(exp64) & np.isnan(act64)) | (np.isinf(exp64) & (exp64 == act64))
    diff = np.where(same_special, 0.0, np.abs(exp64 - act64))
    diff = np.where(np.isnan(diff), np.inf, diff)
    rel = diff / np.maximum(np.abs(np.where(same_special, 1.0, exp64)), np.finfo(np.float64).tiny)
    within = diff <= atol + rtol * np.abs(np.where(same_special, 0.0, exp64))
    max_abs, max_rel = float(diff.max()), float(np.where(diff == 0, 0.0, rel).max())
    ok = bool(within.all())
    problem = "" if ok else f"max abs error {max_abs:.3g}, max rel error {max_rel:.3g}"
    return OutputComparison(name, ok, max_abs, max_rel, *shapes, problem)


HALF_PRECISION = {"float16": (1e-2, 1e-3), "bfloat16": (5e-2, 1e-2)}  # rtol, atol floors: a few units of rounding
SCALE_FRACTION = 1e-2  # an output under `atol` is compared to this fraction of its largest magnitude


def scaled_atol(expected: np.ndarray, atol: float) -> float:
    """`atol`, or SCALE_FRACTION of the largest finite magnitude of `expected` where every value is under `atol`
    (and not all 0): such an output (a library's init leaves MobileNetV2's near 1e-25) would match any other output
    under `atol`, a comparison that cannot fail. Outputs past `atol` keep it: a small output computed as the
    difference of large values differs by rounding between PyTorch and onnxruntime (helper 158: 3e-5 on an output
    of 1e-3, whose 1% cap refused a right export)."""
    if expected.dtype.kind not in "fc" or not expected.size:
        return atol
    magnitudes = np.abs(expected[np.isfinite(expected)])
    scale = float(magnitudes.max()) if magnitudes.size else 0.0
    return SCALE_FRACTION * scale if 0 < scale < atol else atol


def _at_least_precision(dtype: np.dtype, rtol: float, atol: float) -> tuple[float, float]:
    """Tolerances no finer than the dtype can hold: a repaired fp16 graph rounds in another order."""
    floor = HALF_PRECISION.get(np.dtype(dtype).name)
    return (max(rtol, floor[0]), max(atol, floor[1])) if floor else (rtol, atol)


def compare_outputs(
    expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], rtol: float, atol: float
) -> list[OutputComparison]:
    """One comparison per expected output; an output the candidate lacks is a failure."""
    results = []
    for name, value in expected.items():
        if name not in actual:
            results.append(OutputComparison(name, False, None, None, list(np.shape(value)), [], "output missing"))
            continue
        results.append(compare_arrays(name, value, actual[name], rtol, atol))
    return results


class ShapeOracle:
    """Output shapes from onnxruntime's symbolic shape inference (or given ones, e.g. the model's declared output
    shapes), evaluated at a binding of input dims.

    Inference runs on first use only: where the original runs and agrees, no shape needs an oracle."""

    def __init__(self, model: onnx.ModelProto, expected: dict[str, list | None] | None = None,
                 says: str = "shape inference says"):
        self.model = model
        self.says = says
        if expected is not None:
            self.expected = expected

    @functools.cached_property
    def expected(self) -> dict[str, list | None]:
        inferred = symbolic_shapes(self.model)
        return {o.name: inferred.get(o.name) for o in self.model.graph.output}

    def mismatches(self, outputs: dict[str, np.ndarray], sizes: dict[str, int]) -> list[str]:
        """One line per output dim that shape inference decides and the run contradicts."""
        problems = []
        for name, value in outputs.items():
            expected = self.expected.get(name)
            if expected is None:
                continue
            actual = list(np.shape(value))
            if len(expected) != len(actual):
                problems.append(f"output '{name}' has rank {len(actual)}, {self.says} {len(expected)}")
                continue
            for axis, (dim, got) in enumerate(zip(expected, actual, strict=True)):
                want = evaluate_dim(dim, sizes)
                if want is not None and want >= 0 and want != got:  # below 0: a size outside the declaration
                    shown = dim if isinstance(dim, int) else f"{dim} = {want}"
                    problems.append(f"output '{name}' dim {axis} is {got}, {self.says} {shown}")
        return problems


def evaluate_dim(dim: int | str | None, sizes: dict[str, int]) -> int | None:
    """An int dim, or an expression of bound dims ("2*N + 1", "floor(T/2)") evaluated by graphfix's own grammar
    (`dim_expr`: model text is never run); None when undecided."""
    if isinstance(dim, int):
        return dim if dim > 0 else None
    if not dim:
        return None
    if dim in sizes:
        return sizes[dim]
    if dim.isidentifier():
        return None  # a dim name no input carries (unk__0, Reshape_dim_1): undecided
    value = dim_expr.evaluate(dim, sizes)
    if value is None or value.denominator != 1:
        log.debug("dim %r is undecided at %s", dim, sizes)
        return None
    return int(value)


def declared_shapes(model: onnx.ModelProto) -> dict[str, list | None]:
    """Output name -> the dims the model declares (int, dim name, or None), None when it declares no shape."""
    shapes: dict[str, list | None] = {}
    for out in model.graph.output:
        tensor = out.type.tensor_type
        if not tensor.HasField("shape"):
            shapes[out.name] = None
            continue
        shapes[out.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in tensor.shape.dim]
    return shapes


def possible_shapes(model: onnx.ModelProto) -> dict[str, list | None]:
    """`declared_shapes`, less a declaration of a rank the graph cannot give: torch.export declares
    `x.squeeze(-1)` of a length it cannot prove is 1 (`Min(12, T) // 12`) with that axis, and the ONNX Squeeze
    removes it wherever it runs (it fails elsewhere), as PyTorch's squeeze does where the length is 1 (helper 147:
    a healthy export refused at every size). A fresh dict: callers drop from it what a run contradicts."""
    declared = declared_shapes(model)
    return {name: None if name in _ranks_never_given(model) else dims for name, dims in declared.items()}


@per_model  # a repair's every trial builds a Judge of the same original
def _ranks_never_given(model: onnx.ModelProto) -> frozenset[str]:
    """The outputs a Squeeze makes whose declared rank onnx's inference of the graph (the outputs' declarations
    cleared) contradicts."""
    declared = declared_shapes(model)
    squeezed = {name for node in model.graph.node if node.op_type == "Squeeze" for name in node.output} & {
        name for name, dims in declared.items() if dims is not None}
    if not squeezed:
        return frozenset()
    bare = skeleton(model)  # a copy
    for out in bare.graph.output:
        out.type.tensor_type.ClearField("shape")
    given = declared_shapes(infer_shapes(bare))
    return frozenset(name for name in squeezed
                     if given.get(name) is not None and len(given[name]) != len(declared[name]))


def drop_contradicted(declared: dict[str, list | None], outputs: dict[str, np.ndarray], binding: dict[str, int],
                      known: dict[str, int]) -> None:
    """Drop from `declared` each dim that the outputs at the export size contradict, where that size is `known`
    (`--trace-shape`, or solved from the graph): a wrong declaration, not a promise (an output named `time` that is
    `time - 1` long). At a guessed size a contradiction may be the very bug, and stays."""
    for name, value in outputs.items():
        dims = declared.get(name)
        if dims is not None and len(dims) == np.ndim(value):
            declared[name] = [None if d in known and evaluate_dim(d, binding) != size else d
                              for d, size in zip(dims, np.shape(value), strict=True)]


def compare_overlap(name: str, expected: np.ndarray, actual: np.ndarray, rtol: float,
                    atol: float) -> OutputComparison:
    """Values compared on the region both shapes cover (same rank), shapes reported as they are."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    if expected.ndim != actual.ndim:
        return OutputComparison(name, False, None, None, list(expected.shape), list(actual.shape),
                                f"rank {actual.ndim} instead of {expected.ndim}")
    region = tuple(slice(0, min(a, b)) for a, b in zip(expected.shape, actual.shape, strict=True))
    result = compare_arrays(name, expected[region], actual[region], rtol, atol)
    result.expected_shape, result.actual_shape = list(expected.shape), list(actual.shape)
    if not result.ok:
        result.problem = f"on the region both shapes cover: {result.problem}"
    return result
