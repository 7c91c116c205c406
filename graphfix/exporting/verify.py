"""`graphfix.verify`: compare an ONNX file with the PyTorch module it came from, at several input sizes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from graphfix.io.loading import load_model
from graphfix.validate.compare import scaled_atol
from graphfix.validate.graph_sizes import graph_inputs


@dataclass
class OutputError:
    name: str
    shape_onnx: list[int]
    shape_torch: list[int]
    max_abs: float
    max_rel: float
    ok: bool


@dataclass
class SizeCheck:
    """One comparison: the input shapes, whether onnxruntime ran, and per-output errors."""

    input_shapes: dict[str, list[int]]
    ok: bool
    error: str | None = None
    outputs: list[OutputError] = field(default_factory=list)


@dataclass
class VerifyReport:
    path: str
    checks: list[SizeCheck]
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"path": self.path, "ok": self.ok, "checks": [asdict(c) for c in self.checks],
                "skipped": self.skipped}


def verify(onnx_path, torch_module, example_args, probe_args=None, *, rtol: float = 1e-3, atol: float = 1e-4,
           seed: int = 0, kwargs: dict | None = None, input_names=None) -> VerifyReport:
    """Run the module and the ONNX file on the example args and on probe args (given, or made by resizing the
    example's dynamic dims), and compare every output. `ok` only when every size ran and matched.

    Arguments are what torch.onnx.export takes: tensors, tuples, lists and dicts of them (a detection model's list
    of images), keyword arguments as `kwargs` or as a dict ending the args tuple; the ONNX inputs are their
    tensors in order, or those `input_names` names (as given to the export, which may drop an unused one)."""
    import onnxruntime as ort

    loaded = load_model(onnx_path)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a size onnxruntime fails at is the report's, not a line on stderr
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    fed, aligned = {i.name for i in session.get_inputs()}, call_inputs(loaded.proto, input_names)
    example = split_call(example_args, kwargs)
    calls = [example] + [split_call(a, kwargs) for a in probe_args] if probe_args is not None else \
        [example, *_resized_calls(aligned, example, seed)]
    checks: list[SizeCheck] = []
    skipped: list[str] = []
    torch_module.eval()
    for args, named in calls:
        tensors = call_tensors(args, named)
        feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(aligned.graph.input, tensors, strict=False)
                 if i.name in fed}
        shapes = {name: list(value.shape) for name, value in feeds.items()}
        try:
            import torch

            with torch.no_grad():
                expected = _flatten(torch_module(*args, **named))
        except Exception as exc:  # sizes the module itself rejects prove nothing either way
            skipped.append(f"{shapes}: the PyTorch module raised {type(exc).__name__}: {exc}")
            continue
        if any(e.size and e.dtype.kind in "fc" and not np.isfinite(e).any() for e in expected):
            skipped.append(f"{shapes}: an output of the PyTorch module has no finite value there (inputs outside "
                           "what it takes): compared, it would prove nothing")
            continue
        try:
            actual = session.run(None, feeds)
        except Exception as exc:  # onnxruntime's own failure is the finding
            checks.append(SizeCheck(shapes, False, str(exc).splitlines()[0]))
            continue
        outputs = [_compare(meta.name, got, want, rtol, atol)
                   for meta, got, want in zip(session.get_outputs(), actual, expected, strict=False)]
        ok = len(actual) == len(expected) and all(o.ok for o in outputs)
        error = None if len(actual) == len(expected) else f"{len(actual)} outputs, torch gave {len(expected)}"
        checks.append(SizeCheck(shapes, ok, error, outputs))
    return VerifyReport(str(onnx_path), checks, skipped)


def split_call(args, kwargs: dict | None = None) -> tuple[tuple, dict]:
    """(positional args, keyword args) as torch.onnx.export reads them: a tensor alone is one argument, and a dict
    ending the args tuple holds keyword arguments (an empty one lets a dict be the last positional argument)."""
    args = tuple(args) if isinstance(args, tuple) else (args,)
    named = dict(kwargs or {})
    if args and isinstance(args[-1], dict):
        named = {**args[-1], **named}
        args = args[:-1]
    return args, named


def call_tensors(args: tuple, named: dict) -> list:
    """The tensors of a call in the order the exporters make graph inputs of them (pytree order)."""
    import torch
    from torch.utils._pytree import tree_leaves

    return [leaf for leaf in tree_leaves((args, named)) if isinstance(leaf, torch.Tensor)]


def resized_call(args: tuple, named: dict, shape_of) -> tuple[tuple, dict]:
    """The call with its n-th tensor replaced by `shape_of(n, tensor)` (the tensor itself when it returns None)."""
    import torch
    from torch.utils._pytree import tree_flatten, tree_unflatten

    leaves, spec = tree_flatten((args, named))
    position, resized = 0, []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            leaf = shape_of(position, leaf)
            position += 1
        resized.append(leaf)
    return tree_unflatten(resized, spec)


def _flatten(value) -> list[np.ndarray]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value.detach().cpu().numpy()]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [array for item in value for array in _flatten(item)]
    return [np.asarray(value)]


def _compare(name: str, got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> OutputError:
    if got.shape != want.shape:
        return OutputError(name, list(got.shape), list(want.shape), float("inf"), float("inf"), False)
    if got.size == 0:
        return OutputError(name, list(got.shape), list(want.shape), 0.0, 0.0, True)
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    rel = diff / np.maximum(np.abs(want.astype(np.float64)), 1e-12)
    ok = bool(np.allclose(got, want, rtol=rtol, atol=scaled_atol(want, atol), equal_nan=True))
    return OutputError(name, list(got.shape), list(want.shape), float(diff.max()), float(rel.max()), ok)


def _resized_calls(model: onnx.ModelProto, example: tuple[tuple, dict], seed: int) -> list[tuple[tuple, dict]]:
    """Two more calls: the example's dynamic dims (named dims kept equal) doubled and tripled, which keeps any
    divisibility the module relies on."""
    import torch

    export_sizes = dim_sizes(model, call_tensors(*example))
    if not export_sizes:
        return []
    generator = torch.Generator().manual_seed(seed)
    return [sized_call(model, example, {name: factor * size for name, size in export_sizes.items()}, generator)
            for factor in (2, 3)]


def call_inputs(model: onnx.ModelProto, input_names=None) -> onnx.ModelProto:
    """A model holding only `model`'s graph inputs, lined up with a call's tensors: its n-th input is the n-th
    tensor's. Where `input_names` names every input and more (the TorchScript exporter drops an argument the
    module does not use: helper 106), an input with no shape stands for each dropped name; else the graph's order.
    What pairs tensors with inputs by position (`named_dims`, `sized_call`) reads this, never the export."""
    inputs = graph_inputs(model)
    names = list(input_names or [])
    aligned = onnx.ModelProto()
    if len(names) > len(inputs) and {meta.name for meta in inputs} <= set(names):
        by_name = {meta.name: meta for meta in inputs}
        inputs = [by_name.get(name) or onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)
                  for name in names]
    aligned.graph.input.extend(inputs)
    return aligned


def dim_sizes(model: onnx.ModelProto, tensors) -> dict[str, int]:
    """dim_param -> its size in `tensors` (the call's tensors, in the graph inputs' order)."""
    return {name: size for name, (_, _, size) in named_dims(model, [t.shape for t in tensors]).items()}


def named_dims(model: onnx.ModelProto, shapes) -> dict[str, tuple[str, int, int]]:
    """dim_param -> (graph input, axis, size in `shapes`): the first input that has the dim, where it is read."""
    dims: dict[str, tuple[str, int, int]] = {}
    for meta, shape in zip(graph_inputs(model), shapes, strict=False):
        for axis, (dim, size) in enumerate(zip(meta.type.tensor_type.shape.dim, shape, strict=False)):
            if dim.dim_param and dim.dim_param not in dims:
                dims[dim.dim_param] = (meta.name, axis, int(size))
    return dims


def sized_call(model: onnx.ModelProto, example: tuple[tuple, dict], sizes: dict[str, int], generator):
    """The example call with random tensors whose named dims have `sizes` (the other dims as in the example)."""
    inputs = graph_inputs(model)

    def resized(position: int, arg):
        meta = inputs[position] if position < len(inputs) else None
        dims = meta.type.tensor_type.shape.dim if meta is not None else []
        shape = [sizes.get(d.dim_param, s) if d.dim_param else s
                 for d, s in zip(dims, arg.shape, strict=False)] or list(arg.shape)
        return random_like(arg, shape, generator)

    return resized_call(*example, resized)


def random_like(arg, shape: list[int], generator):
    """A random tensor of `arg`'s dtype and value range, in `shape`."""
    import torch

    if arg.dtype == torch.bool:
        return torch.rand(shape, generator=generator) < 0.5
    if not arg.dtype.is_floating_point:
        high = int(arg.max()) + 1 if arg.numel() else 2
        return torch.randint(0, max(high, 1), shape, generator=generator, dtype=arg.dtype)
    return torch.randn(shape, generator=generator, dtype=arg.dtype)



