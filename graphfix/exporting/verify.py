"""`graphfix.verify`: compare an ONNX file with the PyTorch module it came from, at several input sizes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from graphfix.io.loading import load_model


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
           seed: int = 0) -> VerifyReport:
    """Run the module and the ONNX file on the example args and on probe args (given, or made by resizing the
    example's dynamic dims), and compare every output. `ok` only when every size ran and matched."""
    import onnxruntime as ort
    import torch

    loaded = load_model(onnx_path)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    example = _as_tuple(example_args)
    arg_sets = [example] + [_as_tuple(a) for a in (probe_args if probe_args is not None
                                                    else _resized_args(loaded.proto, example, seed))]
    checks: list[SizeCheck] = []
    skipped: list[str] = []
    torch_module.eval()
    for args in arg_sets:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), tensors, strict=False)}
        shapes = {name: list(value.shape) for name, value in feeds.items()}
        try:
            with torch.no_grad():
                expected = _flatten(torch_module(*args))
        except Exception as exc:  # sizes the module itself rejects prove nothing either way
            skipped.append(f"{shapes}: the PyTorch module raised {type(exc).__name__}: {exc}")
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


def _as_tuple(args) -> tuple:
    return tuple(args) if isinstance(args, list | tuple) else (args,)


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
    ok = bool(np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True))
    return OutputError(name, list(got.shape), list(want.shape), float(diff.max()), float(rel.max()), ok)


def _resized_args(model: onnx.ModelProto, example: Sequence, seed: int) -> list[tuple]:
    """Two more argument sets: the example's dynamic dims (named dims kept equal) doubled and tripled, which keeps
    any divisibility the module relies on."""
    import torch

    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    tensors = [a for a in example if isinstance(a, torch.Tensor)]
    export_sizes: dict[str, int] = {}
    for meta, tensor in zip(inputs, tensors, strict=False):
        for dim, size in zip(meta.type.tensor_type.shape.dim, tensor.shape, strict=False):
            if dim.dim_param:
                export_sizes.setdefault(dim.dim_param, int(size))
    if not export_sizes:
        return []
    generator = torch.Generator().manual_seed(seed)
    arg_sets = []
    for factor in (2, 3):
        sizes = {name: factor * size for name, size in export_sizes.items()}
        new_args, position = [], 0
        for arg in example:
            if not isinstance(arg, torch.Tensor):
                new_args.append(arg)
                continue
            meta = inputs[position] if position < len(inputs) else None
            position += 1
            dims = meta.type.tensor_type.shape.dim if meta is not None else []
            shape = [sizes.get(d.dim_param, s) if d.dim_param else s
                     for d, s in zip(dims, arg.shape, strict=False)] or list(arg.shape)
            new_args.append(random_like(arg, shape, generator))
        arg_sets.append(tuple(new_args))
    return arg_sets


def random_like(arg, shape: list[int], generator):
    """A random tensor of `arg`'s dtype and value range, in `shape`."""
    import torch

    if arg.dtype == torch.bool:
        return torch.rand(shape, generator=generator) < 0.5
    if not arg.dtype.is_floating_point:
        high = int(arg.max()) + 1 if arg.numel() else 2
        return torch.randint(0, max(high, 1), shape, generator=generator, dtype=arg.dtype)
    return torch.randn(shape, generator=generator, dtype=arg.dtype)



