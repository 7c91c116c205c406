"""`freeze`: replace a graph input by a constant fill, fold what becomes constant, simplify, prove, write.

    result = freeze(load_model("hubert.onnx"), {"padding_mask": "false"}, Path("frozen.onnx"))

A fill is `true`, `false`, a number, or an array (`@file.npy`), cast to the input's type when the type holds its
values (floats round to the nearest), else refused (`cast_fills`). A scalar fill takes the input's shape: fixed
dims as they are, and each symbolic dim from another input that shares its name (`padding_mask [batch, time]`
follows `features [batch, time, 16]` through `Shape`), so the frozen model keeps working at every size. A
symbolic dim no other input carries cannot be followed: give an array, or fix the dim with `set-shape` first.

Folding: a scalar fill is a tensor whose elements are all equal ("uniform"), though its shape is only known at
run time, which onnxsim cannot fold. graphfix follows uniform values through elementwise and layout ops (Not,
Cast, Unsqueeze, Reshape, Expand, ...) and turns a `Where` whose condition is uniform into its selected branch
(an all-false padding mask selects the data), when that branch has the highest rank of the three operands, so
the result's shape is the branch's. onnxsim then folds and simplifies the rest.

Proof: at several sizes the original, fed the fill, and the frozen model must agree; where the original fails
(the HuBERT `Where` that cannot broadcast), the frozen model must run, with finite outputs of the inferred shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from graphfix.analysis.builders import Builder
from graphfix.analysis.shapes import infer_shapes
from graphfix.core import values
from graphfix.core.config import read_npy
from graphfix.core.errors import UsageError
from graphfix.io.graphs import export_graph, import_graph, tidy
from graphfix.io.loading import LoadedModel, default_opset
from graphfix.io.staging import scratch_dir
from graphfix.surgery import SurgeryResult, non_finite, output_problems, write_checked
from graphfix.surgery.observed import WholeRun, declared_names, relax
from graphfix.validate import ValidationOptions, probe_sizes, synthesize_inputs
from graphfix.validate.compare import ShapeOracle
from graphfix.validate.given import Fill, cast_fills
from graphfix.validate.inputs import check_shapes, dim_names, graph_inputs
from graphfix.validate.runner import ModelRunner

UNIFORM_UNARY = {
    "Not": np.logical_not, "Identity": lambda v: v, "Neg": np.negative, "Abs": np.abs, "Sign": np.sign,
}
NEUTRAL = {"Mul": 1, "Div": 1, "Add": 0, "Sub": 0}  # op(x, uniform n) == x
UNIFORM_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "And": np.logical_and,
                  "Or": np.logical_or, "Xor": np.logical_xor, "Equal": np.equal, "Less": np.less,
                  "Greater": np.greater}
MAX_CONSTANT = 64  # constants up to this many elements are read to see whether they are uniform
UNIFORM_LAYOUT = {"Unsqueeze", "Squeeze", "Reshape", "Expand", "Transpose", "Flatten", "Tile", "Slice"}


def parse_fill(text: str) -> Fill:
    """`true` / `false` / a number / `@file.npy`."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if text.startswith("@"):
        return read_npy(Path(text[1:]), f"fill {text}")
    if lowered.lstrip("+-") in ("inf", "infinity", "nan"):
        return float(lowered)  # spelled out: an additive mask's -inf is meant (1e400 is a number that overflows)
    if values.DIGITS.fullmatch(lowered.lstrip("+-")) and len(lowered) <= values.MAX_DIGITS:
        return int(lowered)  # its input's type's range is checked by cast_fills
    try:
        return values.number(lowered, f"fill '{text}'")
    except UsageError:
        raise UsageError(f"bad fill '{text}': expected true, false, a finite number (or inf, -inf, nan) or "
                         "@file.npy") from None


def freeze(loaded: LoadedModel, fills: dict[str, Fill], output: Path | None,
           options: ValidationOptions | None = None, simplify: bool = True) -> SurgeryResult:
    """Freeze the inputs named in `fills`, fold, simplify, check against the original, and write."""
    options = options or ValidationOptions()
    check_shapes(loaded.proto, options.shapes)
    fills = cast_fills(loaded.proto, fills)  # the original is fed the same values the constant holds
    model, folded = freeze_proto(loaded.proto, fills)
    notes = [f"folded {n}" for n in folded]
    runs = original_runs(loaded, fills, options)  # once per probe size: the declarations, then the check
    taken = declared_names(model)
    notes += [note for vi in model.graph.output if (note := relax(vi, runs, taken))]
    if simplify:
        from graphfix.pipeline.simplify import simplify as onnxsim

        outcome = onnxsim(model, base_dir=loaded.base_dir)
        model = outcome.model
        notes.append(outcome.message or "simplified with onnxsim")
    summary = "froze " + ", ".join(f"{name}={_describe(value)}" for name, value in fills.items())

    def check(staged: Path):
        return check_frozen(loaded, staged, fills, options, runs)

    with scratch_dir() as scratch:
        result = write_checked(model, output, loaded, summary, check, Path(scratch))
    result.notes = notes + result.notes
    return result


def _describe(value: Fill) -> str:
    if isinstance(value, np.ndarray):
        return f"array{list(value.shape)} {value.dtype}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def freeze_proto(model: onnx.ModelProto, fills: dict[str, Fill]) -> tuple[onnx.ModelProto, list[str]]:
    """The model with each named input computed from its fill (in the input's type: `cast_fills`); what uniform
    folding removed, one line each."""
    inferred = infer_shapes(model)
    graph = import_graph(model, inferred.graph.value_info)
    opset = default_opset(model) or 13
    feeds = {i.name: i for i in graph_inputs(model)}
    uniform: dict[str, np.ndarray] = {}
    for name, value in fills.items():
        if name not in feeds:
            raise UsageError(f"--input {name}: no such graph input (inputs: {', '.join(feeds) or 'none'})")
        if feeds[name].type.WhichOneof("value") != "tensor_type":
            kind = (feeds[name].type.WhichOneof("value") or "no").removesuffix("_type")
            raise UsageError(f"--input {name}: the input is of {kind} type; only tensors can be frozen")
        tensor = next(t for t in graph.inputs if t.name == name)
        _replace_input(graph, tensor, feeds[name], value, fills, feeds, opset)
        if not isinstance(value, np.ndarray):
            uniform[name] = np.array(value, dtype=tensor.dtype)
    if len(graph.inputs) == 0:
        raise UsageError("freezing every input leaves nothing to run; keep at least one input")
    folded = fold_uniform(graph, uniform)
    return export_graph(tidy(graph), model), folded


def _replace_input(graph: gs.Graph, tensor: gs.Variable, vi: onnx.ValueInfoProto, value: Fill,
                   fills: dict[str, Fill], feeds: dict[str, onnx.ValueInfoProto], opset: int) -> None:
    """Make `tensor` the output of a Constant or ConstantOfShape node instead of a graph input."""
    dtype = np.dtype(tensor.dtype)
    names = dim_names(vi)
    graph.inputs.remove(tensor)
    prefix = f"graphfix_freeze_{tensor.name}"
    if isinstance(value, np.ndarray):
        _check_array(tensor.name, value, names)
        const = gs.Constant(f"{prefix}_value", np.ascontiguousarray(value.astype(dtype)))
        graph.nodes.append(gs.Node("Identity", f"{prefix}_Identity", inputs=[const], outputs=[tensor]))
        return
    entries = []
    for axis, dim in enumerate(names):
        if isinstance(dim, int):
            entries.append(dim)
            continue
        source = _sharing_input(graph, dim, tensor.name, fills, feeds)
        if source is None:
            raise UsageError(f"--input {tensor.name}: dim {axis} ('{dim}') is in no other input, so the fill "
                             "cannot follow it at run time; give @file.npy or fix it with `graphfix set-shape`")
        entries.append(source)
    fill = np.array([value], dtype=dtype)
    if not entries:
        const = gs.Constant(f"{prefix}_value", fill.reshape(()))
        graph.nodes.append(gs.Node("Identity", f"{prefix}_Identity", inputs=[const], outputs=[tensor]))
        return
    shape = Builder(graph, prefix, opset).vector(entries)
    graph.nodes.append(gs.Node("ConstantOfShape", f"{prefix}_ConstantOfShape",
                               {"value": numpy_helper.from_array(fill, "value")},
                               inputs=[shape], outputs=[tensor]))


def _check_array(name: str, value: np.ndarray, names: list) -> None:
    if value.ndim != len(names):
        raise UsageError(f"--input {name}: the array has rank {value.ndim}, the input rank {len(names)}")
    for axis, (dim, size) in enumerate(zip(names, value.shape, strict=True)):
        if isinstance(dim, int) and dim != size:
            raise UsageError(f"--input {name}: the array's dim {axis} is {size}, the input's {dim}")


def _sharing_input(graph: gs.Graph, dim: str, own: str, fills, feeds) -> tuple[gs.Tensor, int] | None:
    """(another graph input, axis) whose dim has the name `dim`; inputs being frozen do not count."""
    if ":" in dim and dim.startswith(f"{own}:"):
        return None  # an unnamed dim (`?`): nothing can share it
    for tensor in graph.inputs:
        if tensor.name in fills or tensor.name == own:
            continue
        for axis, other in enumerate(dim_names(feeds[tensor.name])):
            if other == dim:
                return tensor, axis
    return None


def fold_uniform(graph: gs.Graph, seeds: dict[str, np.ndarray]) -> list[str]:
    """Follow uniform (all-elements-equal) tensors from `seeds`; turn a Where on a uniform condition into its
    branch, and Mul/Div by a uniform 1 or Add/Sub of a uniform 0 into their data operand, when the result
    provably has that operand's shape. One line per folded node."""
    uniform = dict(seeds)
    folded = []
    for node in graph.toposort().nodes:
        if not node.outputs:
            continue
        ins = [_uniform_value(t, uniform) for t in node.inputs]
        out = node.outputs[0].name
        if node.op == "Where" and ins and ins[0] is not None:
            branch = node.inputs[1] if bool(ins[0]) else node.inputs[2]
            if _result_is(branch, node.inputs, condition=node.inputs[0]):
                folded.append(f"Where '{node.name}' on a uniform {bool(ins[0])} condition to its branch "
                              f"'{branch.name}'")
                _to_identity(node, branch, uniform)
        elif node.op in UNIFORM_BINARY and len(ins) == 2 and ins[0] is not None and ins[1] is not None:
            uniform[out] = np.asarray(UNIFORM_BINARY[node.op](ins[0], ins[1]))
        elif node.op in NEUTRAL and len(ins) == 2 and (ins[0] is None) != (ins[1] is None):
            data_index = 0 if ins[0] is None else 1
            value = ins[1 - data_index]
            if data_index == 1 and node.op in ("Sub", "Div"):
                continue  # 0 - x and 1 / x are not x
            data = node.inputs[data_index]
            if np.all(value == NEUTRAL[node.op]) and _result_is(data, node.inputs):
                folded.append(f"{node.op} '{node.name}' by a uniform {NEUTRAL[node.op]} to '{data.name}'")
                _to_identity(node, data, uniform)
        elif node.op in UNIFORM_UNARY and ins and ins[0] is not None:
            uniform[out] = UNIFORM_UNARY[node.op](ins[0])
        elif node.op == "Cast" and ins and ins[0] is not None:
            to = onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"])
            uniform[out] = ins[0].astype(to)
        elif node.op in UNIFORM_LAYOUT and ins and ins[0] is not None:
            uniform[out] = ins[0]
    return folded


def _uniform_value(tensor: gs.Tensor | None, uniform: dict[str, np.ndarray]) -> np.ndarray | None:
    """The single value of a tensor whose elements are all equal: a followed fill, or a small constant."""
    if tensor is None or not tensor.name:
        return None
    if tensor.name in uniform:
        return uniform[tensor.name]
    stored = getattr(getattr(tensor, "_values", None), "tensor", None)  # gs keeps unread weights lazy
    if stored is not None and stored.data_location == onnx.TensorProto.EXTERNAL:
        return None  # weights in external data are never read here
    if isinstance(tensor, gs.Constant) and int(np.prod(tensor.shape or [1])) <= MAX_CONSTANT:
        values = np.asarray(tensor.values)
        if values.size and np.all(values == values.flat[0]):
            return values.flat[0]
    return None


def _to_identity(node: gs.Node, source: gs.Tensor, uniform: dict[str, np.ndarray]) -> None:
    node.op, node.attrs, node.inputs = "Identity", {}, [source]
    if source.name in uniform:
        uniform[node.outputs[0].name] = uniform[source.name]


def _result_is(data: gs.Tensor, operands: list[gs.Tensor], condition: gs.Tensor | None = None) -> bool:
    """True when the broadcast of `operands` provably has `data`'s shape: every other operand broadcasts onto it
    from the right (each dim 1 or the same size or dim name). A Where condition may instead match the leading dims
    of `data`: the lower-rank mask `x[mask] = v` exports (PyTorch aligns it on the left; that is what it meant)."""
    if data.shape is None:
        return False
    for other in operands:
        if other is data:
            continue
        if other.shape is None or len(other.shape) > len(data.shape):
            return False
        tail = data.shape[len(data.shape) - len(other.shape):]
        if all(_same(a, b) or _same(a, 1) for a, b in zip(other.shape, tail, strict=True)):
            continue
        lead = data.shape[:len(other.shape)]
        if other is condition and all(_same(a, b) for a, b in zip(other.shape, lead, strict=True)):
            continue
        return False
    return True


def _same(a, b) -> bool:
    """Provably equal dims: equal sizes, or equal names that shape inference did not make up."""
    if isinstance(a, str) and isinstance(b, str):
        return a == b and not a.startswith("unk__")
    return isinstance(a, int) and isinstance(b, int) and a == b and a >= 0


def original_runs(loaded: LoadedModel, fills: dict[str, Fill], options: ValidationOptions) -> list[WholeRun]:
    """The original fed the fills at each probe size: its outputs (the check's reference) and their shapes, which
    tell the declared dims it contradicts (a dynamo LSTM's output `[1, 7, 24]`, 7 the export length, which
    onnxruntime's fusions trust: its frozen model failed in every default session, helper 72)."""
    base_dir = loaded.base_dir.resolve() if loaded.base_dir is not None else None
    original = ModelRunner(loaded.proto, base_dir)
    runs = []
    for binding in probe_sizes(loaded.proto, options):
        reference = original.run(_filled(synthesize_inputs(loaded.proto, binding, options), fills))
        runs.append(WholeRun(binding, reference.outputs, {name: tuple(np.shape(value)) for name, value in
                                                          reference.outputs.items()}) if reference.ok
                    else WholeRun(binding, error=reference.error))
    return runs


def _filled(feeds: dict[str, np.ndarray], fills: dict[str, Fill]) -> dict[str, np.ndarray]:
    for name, value in fills.items():
        feeds[name] = value if isinstance(value, np.ndarray) else np.full(feeds[name].shape, value,
                                                                         dtype=feeds[name].dtype)
    return feeds


def check_frozen(loaded: LoadedModel, staged: Path, fills: dict[str, Fill], options: ValidationOptions,
                 runs: list[WholeRun] | None = None) -> tuple[list[dict], list[str]]:
    """At each probe size (`runs`, else the original is run here): the original fed the fill and the frozen model
    agree, or, where the original fails, the frozen model runs with finite outputs of the inferred shapes."""
    frozen = ModelRunner.from_source(staged, deployed=True)
    if frozen.session is None:
        return [], [f"onnxruntime cannot load the frozen model: {frozen.load_error}"]
    still = sorted(set(fills) & set(frozen.input_names))
    if still:
        return [], [f"the frozen model still declares input(s) {', '.join(still)}"]
    oracle = ShapeOracle(frozen.proto)
    checks, reasons = [], []
    for run in runs if runs is not None else original_runs(loaded, fills, options):
        feeds = _filled(synthesize_inputs(loaded.proto, run.sizes, options), fills)
        got = frozen.run({k: v for k, v in feeds.items() if k not in fills}, strict_feeds=True)
        if not got.ok:
            problems = [f"the frozen model fails: {got.error}"]
        elif run.values is not None:
            problems = output_problems(run.values, got.outputs, options.rtol, options.atol)
        else:
            problems = non_finite(got.outputs) + oracle.mismatches(got.outputs, run.sizes)
        checks.append({"sizes": run.sizes, "ok": not problems,
                       "original": "ran" if run.values is not None else f"failed: {run.error}", "problems": problems})
        reasons += [f"at sizes {run.sizes}: {p}" for p in problems]
    return checks, reasons
