"""What the whole model returns at the probe sizes, and the part's declarations made to agree with it.

    runs = run_whole(loaded, ["rnn"], ["logits"], options)   # once per probe size, boundaries exposed
    note = relax(value_info, runs, taken)                      # a declared int the whole contradicts -> a name

The dynamo exporter declares an LSTM's output `[batch, 7, 24]`, 7 the export length, where the graph computes
the time length at every size (red team, helper 72). A part cut from it must neither declare that 7 on an output
it returns at other lengths nor refuse every other length on an input. The whole runs once per probe size; its
returns tell which declared ints are stale, and the same runs are then the reference for the part's check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx

from graphfix.io.loading import LoadedModel
from graphfix.validate import ValidationOptions, probe_sizes, synthesize_inputs
from graphfix.validate.compare import ShapeOracle
from graphfix.validate.inputs import graph_inputs
from graphfix.validate.runner import ModelRunner, with_outputs


@dataclass
class WholeRun:
    """One probe size: the boundary values and the shape of every tensor the whole returned, or why it failed."""

    sizes: dict[str, int]
    values: dict[str, np.ndarray] | None = None  # boundary name -> value; None when the whole failed
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    error: str | None = None


def whole_runner(loaded: LoadedModel, inputs: list[str], outputs: list[str]) -> ModelRunner:
    """The whole model with the boundaries that are no graph inputs exposed as outputs."""
    base_dir = loaded.base_dir.resolve() if loaded.base_dir is not None else None
    feeds_of_whole = {i.name for i in graph_inputs(loaded.proto)}
    exposed = [n for n in (*inputs, *outputs) if n not in feeds_of_whole]
    return ModelRunner(with_outputs(loaded.proto, exposed), base_dir)


def run_whole(loaded: LoadedModel, inputs: list[str], outputs: list[str],
              options: ValidationOptions) -> list[WholeRun]:
    """Run the whole with the boundaries exposed at each probe size; keep the boundaries' values only."""
    whole = whole_runner(loaded, inputs, outputs)
    runs = []
    for binding in probe_sizes(loaded.proto, options):
        feeds = synthesize_inputs(loaded.proto, binding, options)
        reference = whole.run(feeds)
        if not reference.ok:
            runs.append(WholeRun(binding, error=reference.error))
            continue
        returned = {**feeds, **reference.outputs}
        runs.append(WholeRun(binding, {name: returned[name] for name in (*inputs, *outputs)},
                             {name: tuple(np.shape(value)) for name, value in returned.items()}))
    return runs


def relax(vi: onnx.ValueInfoProto, runs: list[WholeRun], taken: set[str]) -> str | None:
    """Make symbolic every int dim of `vi` that the whole contradicts at a probe size: the name of the whole's
    input dim it follows at every size, else a fresh name. A note of the change, None when nothing changed."""
    tensor = vi.type.tensor_type
    seen = [(run.sizes, run.shapes[vi.name]) for run in runs if vi.name in run.shapes]
    if not tensor.HasField("shape") or not seen:
        return None
    before = _text(vi)
    if any(len(shape) != len(tensor.shape.dim) for _, shape in seen):  # another rank: declare none
        tensor.ClearField("shape")
        return f"'{vi.name}' was declared {before}, the whole returns another rank: declared without a shape"
    changed = []
    for axis, dim in enumerate(tensor.shape.dim):
        if not dim.HasField("dim_value") or all(shape[axis] == dim.dim_value for _, shape in seen):
            continue  # symbolic, or confirmed at every size the whole ran
        dim.dim_param = _follows([(sizes, shape[axis]) for sizes, shape in seen]) or _fresh(vi.name, axis, taken)
        changed.append(str(axis))
    if not changed:
        return None
    return (f"'{vi.name}' was declared {before}, the whole returns other sizes on dim {', '.join(changed)}: "
            f"declared {_text(vi)}")


def _follows(observed: list[tuple[dict[str, int], int]]) -> str | None:
    """The one input dim name whose size the axis had at every probe size (None when none or several)."""
    names = set.intersection(*({name for name, size in sizes.items() if size == got} for sizes, got in observed))
    return next(iter(names)) if len(names) == 1 else None


def _fresh(tensor: str, axis: int, taken: set[str]) -> str:
    base = f"{re.sub(r'[^0-9A-Za-z_]+', '_', tensor).strip('_') or 'tensor'}_dim{axis}"
    name, count = base, 1
    while name in taken:
        count += 1
        name = f"{base}_{count}"
    taken.add(name)
    return name


def _text(vi: onnx.ValueInfoProto) -> str:
    return "[" + ", ".join(d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?")
                           for d in vi.type.tensor_type.shape.dim) + "]"


def declared_names(model: onnx.ModelProto) -> set[str]:
    """Every dim name the graph's inputs, outputs and value_info declare."""
    graph = model.graph
    return {d.dim_param for vi in (*graph.input, *graph.output, *graph.value_info)
            for d in vi.type.tensor_type.shape.dim if d.dim_param}


def undeclared(part: onnx.ModelProto, fed: dict[str, np.ndarray], returned: dict[str, np.ndarray],
               sizes: dict[str, int]) -> list[str]:
    """One line per output dim the part declares (a number, or a dim name bound by the probe size or by what
    it was fed) that its run contradicts."""
    bound = dict(sizes)
    for vi in part.graph.input:
        shape = np.shape(fed[vi.name]) if vi.name in fed else ()
        for dim, size in zip(vi.type.tensor_type.shape.dim, shape, strict=False):
            if dim.dim_param:
                bound[dim.dim_param] = size
    declared = {vi.name: [d.dim_value if d.HasField("dim_value") else d.dim_param or None
                          for d in vi.type.tensor_type.shape.dim] if vi.type.tensor_type.HasField("shape") else None
                for vi in part.graph.output}
    return ShapeOracle(part, declared, says="the part declares").mismatches(returned, bound)
