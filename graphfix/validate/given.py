"""Values the user gives for graph inputs (`--input NAME=FILE.npy`, freeze's fills), checked against the inputs
they feed and cast to their types.

    check_given(model, options.inputs)   # a UsageError for an array the input cannot take: another rank, a
                                         # fixed dim it does not have, values the input's type cannot hold;
                                         # else the arrays cast to the inputs' types
    fills = cast_fills(model, fills)     # in the inputs' types (a float64 .npy for a float32 input): the probe's
                                         # feeds (graphfix.validate.inputs.synthesize_inputs), freeze's fills

An array onnxruntime would refuse (rank 2 for a rank-3 input, a float64 array for a float32 input) is the user's
input, not the model, failing: said as a one-line usage error, or cast where the type holds its values (floats
round to the nearest, as numpy's `astype` does), never reported as the model failing at that size.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx

from graphfix.core.errors import UsageError
from graphfix.validate.graph_sizes import dim_names, graph_inputs

NUMERIC = "biufc"  # numpy's kinds of bools and numbers: values of these are cast to the input's type
UNFEEDABLE = frozenset(getattr(onnx.TensorProto, name) for name in (  # types numpy has no arrays of
    "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0", "INT4", "UINT4",
    "FLOAT4E2M1", "INT2", "UINT2") if hasattr(onnx.TensorProto, name))
Fill = bool | int | float | np.ndarray


def check_given(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Refuse (UsageError) an array of another rank than its input, one whose dim differs from a fixed dim the
    input declares or from the size another array gives a dim they share, one for an input of a type numpy has no
    arrays of (bfloat16), strings for numbers, or a value the input's type cannot hold. A name that is no graph
    input is left to the probe (GF001: a caller feeding an input the exporter pruned). Returns `inputs` cast to
    their inputs' types (`cast_fills`), once: every probe size then feeds them as they are."""
    declared = {vi.name: vi for vi in graph_inputs(model) if vi.type.WhichOneof("value") == "tensor_type"}
    sized: dict[str, tuple[str, int]] = {}  # dim name -> the first input and size given for it
    for name, value in inputs.items():
        vi = declared.get(name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = dim_names(vi)
        if len(dims) != value.ndim:
            raise UsageError(f"--input {name}: the array has {value.ndim} dims {list(value.shape)}, the input has "
                             f"rank {len(dims)} {dims}")
        for axis, (want, got) in enumerate(zip(dims, value.shape, strict=True)):
            if isinstance(want, int) and want != got:
                raise UsageError(f"--input {name}: dim {axis} of the array is {got}, the input declares {want} "
                                 f"{dims}")
            first, size = sized.setdefault(want, (name, got)) if isinstance(want, str) else (name, got)
            if size != got:  # x and ids share 't': PyTorch refuses them apart too (helper 81)
                raise UsageError(f"--input {name}: dim {axis} of the array is {got}, but '{want}' is {size} in "
                                 f"--input {first}; the inputs share that dim")
        elem = vi.type.tensor_type.elem_type
        if elem in UNFEEDABLE:
            raise UsageError(f"--input {name}: the input is {onnx.TensorProto.DataType.Name(elem).lower()}, which "
                             "onnxruntime's Python API takes no values of")
        kind = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).kind if elem else None
        if kind in NUMERIC and value.dtype.kind not in NUMERIC:
            raise UsageError(f"--input {name}: the array holds {value.dtype.name} values, the input takes numbers")
    return cast_fills(model, inputs)


def cast_fills(model: onnx.ModelProto, fills: dict[str, Fill]) -> dict[str, Fill]:
    """`fills` in their inputs' types: an array cast (a float64 .npy for a float32 input), a number checked to fit.
    A number rounds to the nearest float of a float input's type (2049 and 2049.0 to float16's 2048, helper 75);
    into any other type it must survive the cast unchanged (no 1.5 for an int input, no 300 for a uint8 one), else
    it is a UsageError naming the input and its type's range."""
    types = {vi.name: vi.type.tensor_type.elem_type for vi in graph_inputs(model)
             if vi.type.WhichOneof("value") == "tensor_type"}
    cast = dict(fills)
    for name, value in fills.items():
        if not types.get(name):
            continue  # no such tensor input, or no declared type: freeze_proto says so, or takes it as it is
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(types[name]))
        if dtype.kind not in NUMERIC:
            continue  # strings and the types numpy has no arrays of pass as they are
        if not isinstance(value, np.ndarray):
            if not _holds(value, dtype):
                raise UsageError(f"--input {name}: {value} is no {dtype} value ({_range(dtype)})")
        elif value.dtype != dtype and value.dtype.kind in NUMERIC:
            cast[name] = _cast_array(name, value, dtype)
    return cast


def _holds(value: bool | int | float, dtype: np.dtype) -> bool:
    """Whether the number `value` is one of `dtype`'s values (a float: within its finite range)."""
    if dtype.kind == "b":
        return value in (0, 1)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return (not isinstance(value, float) or value.is_integer()) and info.min <= value <= info.max
    return not np.isfinite(value) or abs(value) <= np.finfo(dtype).max  # rounded to the nearest, as 2049.0 is


def _cast_array(name: str, value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", np.exceptions.ComplexWarning)  # the imaginary part is checked below
        cast = value.astype(dtype)
        if value.dtype.kind == "c" and dtype.kind != "c":
            lost = value.imag != 0
        elif dtype.kind in "fc":  # into a float: rounding is fine (2049 is float16's 2048), overflow is not
            lost = np.isfinite(value) & ~np.isfinite(cast)
        elif dtype.kind in "iub" and value.dtype.kind in "iu" and value.size:  # exactly: a uint64 above int64's
            lo, hi = (0, 1) if dtype.kind == "b" else (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
            if lo <= int(value.min()) and int(value.max()) <= hi:  # not astype's round trip: it wraps back
                lost = np.zeros(value.shape, bool)
            else:  # as Python ints, which no comparison of mixed signs wraps
                lost = (value.astype(object) < lo) | (value.astype(object) > hi)
        else:
            lost = cast.astype(value.dtype) != value
    if lost.any():
        raise UsageError(f"--input {name}: the array holds {value[lost].flat[0]}, no {dtype} value "
                         f"({_range(dtype)}); give values the input's type holds")
    return cast


def _range(dtype: np.dtype) -> str:
    if dtype.kind == "b":
        return "true, false, 0 or 1"
    if dtype.kind in "iu":
        return f"whole numbers from {np.iinfo(dtype).min} to {np.iinfo(dtype).max}"
    return f"finite values up to {float(np.finfo(dtype).max):g} in size"
