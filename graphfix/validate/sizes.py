"""Choosing the sizes a model is probed at: where exports break, within what the graph allows.

A binding maps every symbolic dim name to a size; dims without a name (`?`, -1) are named `<input>:<axis>`.
The first binding is the export-time size (`trace_sizes`, else a guess from the graph's baked shape constants,
else a default). Then come

- batch 1 with the other dims below their export size: a key-padding mask or a batch-folding reshape is right
  at batch 1, and a front end meets its minimum length;
- sizes above the export size (odd, never a multiple of it), different for every dim (dims that stay equal hide
  batch/time mix-ups) and from every fixed size of the graph (a dim equal to a weight's dim, or to a static dim of
  a tensor that also carries a dynamic one, lets a wrong broadcast run);
- a binding past each whole constant that a size read from an input's Shape is subtracted from, clamped by or
  compared with (`size_thresholds`), where no other binding goes past it: one of the dims that size is read from
  just past it. `F.pad(x, (0, math.ceil(T / 8) * 8 - T))` traced at T = 37 pads by `40 - T`, and only a length
  above 40 shows that the output stops at 40. A size read from an inner tensor's Shape names its input dims
  through the size analysis (graphfix.validate.inner_thresholds), and a centred window of a table
  (graphfix.validate.spans) is crossed by two: its fragment of one row may broadcast;

No size goes beyond a limit the graph reveals (graphfix.validate.graph_sizes): a table indexed by positions (a
Range), sliced by a length or sliced from a constant minus a length (`pe[16 - T : 16]`: past 16 the start wraps, and
the threshold probe stops at 16 too) bounds the non-batch dims; none falls below what a strided Conv/Pool front end
needs for several output frames (graphfix.analysis.sizes.domain: an input shorter than a kernel fails in PyTorch
too, it is outside the model; lengths a Conv reads together, `cat([a, b])`, move up together), and a dim
torch.export declares `k * name + c` is probed at sizes k n + c (graphfix.analysis.sizes.domain.input_steps: the
exporter checked the model there). 1 appears only in the
batch-1 binding (batch dims at 1; no other dim goes below 2). A binding where a probed dim is 1, equals another
probed dim or a static size of the graph is a coincidence (`coincidence`): it is still compared, but earns no
evidence. `--shape` and `--input` fix dims at every binding but one: the proof and the diagnosis probe also
run the batch dims `--shape` fixed moved (`shape_moved`).
A mask input whose dims the exporter named apart from those of the input it masks takes that input's sizes
(`mask_aliases`: torch.export names GPT-2's `attention_mask` apart from `input_ids`, though every caller feeds
them alike).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import onnx

from graphfix.analysis.broadcast import batch_named
from graphfix.analysis.sizes import bind, tied_dims
from graphfix.analysis.sizes.domain import input_minimums, input_steps, input_strides, joint_floors
from graphfix.validate.graph_sizes import (
    baked_size_hint,
    dim_names,
    fixed_sizes,
    graph_inputs,
    met_sizes,
    size_limit,
    size_thresholds,
)
from graphfix.validate.inner_thresholds import inner_thresholds
from graphfix.validate.spans import open_windows, window_thresholds

MASK_LIKE = re.compile(r"mask", re.IGNORECASE)
FLOATS = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                    onnx.TensorProto.DOUBLE})
DEFAULT_BATCH = 2
DEFAULT_OTHER = 12
ANY = (1, 0)  # a dim's step where torch.export declared none: every size


def batch_dims(model: onnx.ModelProto) -> set[str]:
    """Symbolic dims taken for the batch: an input's leading dim, or one named like a batch."""
    found = set()
    for vi in graph_inputs(model):
        names = dim_names(vi)
        named = batch_named(names)
        found |= {name for axis, name in enumerate(names) if isinstance(name, str) and (axis == 0 or name in named)}
    return found


def mask_aliases(model: onnx.ModelProto) -> dict[str, str]:
    """A mask input's dims named apart from those of the input it masks, each with that input's dim: the partner
    is the first other input of the same rank and element type (`input_ids` for `attention_mask`), else the first
    float one of the same rank (an audio encoder's samples for its int64 mask: transformers' Moonshine, helper 98;
    not int64 tokens for a bool memory mask), and a dim is aliased only where no other input names it.
    torch.export names the mask's dims apart when no op it traced equates them (GPT-2 indexes the mask), though
    every caller feeds the two alike: probed apart, the model fails where PyTorch fails too."""
    inputs = graph_inputs(model)
    others = [vi for vi in inputs if not MASK_LIKE.search(vi.name)]
    used = {name for vi in others for name in dim_names(vi) if isinstance(name, str)}
    aliases: dict[str, str] = {}
    for mask in (vi for vi in inputs if MASK_LIKE.search(vi.name)):
        kind, mine = mask.type.tensor_type.elem_type, dim_names(mask)
        ranked = [o for o in others if len(dim_names(o)) == len(mine)]
        partner = next((o for o in ranked if o.type.tensor_type.elem_type == kind), None) or \
            next((o for o in ranked if o.type.tensor_type.elem_type in FLOATS), None)
        for own, theirs in zip(mine, dim_names(partner) if partner is not None else (), strict=False):
            if isinstance(own, str) and isinstance(theirs, str) and own != theirs and own not in used:
                aliases.setdefault(own, theirs)
    return aliases


def probe_sizes(model: onnx.ModelProto, options, tied: dict | None = None, *,
                moved: Callable[[dict[str, int]], bool] | None = None) -> list[dict[str, int]]:
    """The export binding first, then batch 1 and smaller sizes, then larger ones: `num_sizes` in all. A mask's
    dims named apart from the input it masks take that input's sizes (`mask_aliases`), and a dim the graph ties to
    others is computed from them (`tied`, by default `tied_dims(model)`: a mask's frames from the audio's samples,
    `T = U / 3`): probed apart, the model fails where PyTorch fails too. `moved` (the proof and the diagnosis
    probe, their memory budget's `fits`): one more binding where the batch dims `--shape` fixed move
    (`shape_moved`), where it fits; one that does not is not tried (the sizes given are the ones deployed: a run
    past the budget at a size moved for more evidence would refuse a model the user's sizes prove), nor is a size
    past a threshold that does not fit."""
    aliases = mask_aliases(model)
    tied = tied_dims(model) if tied is None else tied
    bindings: list[dict[str, int]] = []
    found = _probe_sizes(model, options, moved)
    extra = shape_moved(model, options, found[0]) if moved else None
    for binding in [*found, extra] if extra else found:
        last = binding is extra
        binding = {name: binding[aliases[name]] if aliases.get(name) in binding else size
                   for name, size in binding.items()}
        binding = bind(binding, tied) if tied else binding
        if last and not moved(binding):
            continue
        if binding not in bindings:
            bindings.append(binding)
    return bindings


def _probe_sizes(model: onnx.ModelProto, options, fits: Callable[[dict[str, int]], bool] | None = None
                 ) -> list[dict[str, int]]:
    forced = forced_sizes(model, options)
    least, steps = input_minimums(model, known=options.trace_sizes), input_steps(model)
    export = export_sizes(model, options, forced, least, steps)
    if not export:
        return [{}]
    windows = open_windows(model, options.trace_sizes)  # ESPnet's table grown at the export size bounds nothing
    batch, avoid = batch_dims(model), fixed_sizes(model)
    limit = size_limit(model, grown=any(not window.exact for window in windows))
    wanted = max(options.num_sizes, 1)
    bindings = [export]
    single = {name: _up(1, steps.get(name, ANY)) for name in batch if name in export and name not in forced}
    grow = input_strides(model, export)  # a larger size gives every strided front end another output position
    smaller = _spread(export, 2, batch, {**forced, **single}, limit, avoid, least, steps=steps)
    jointly = joint_floors(model, smaller, {name: export[name] for name in export if name not in forced})
    if jointly:  # a Conv over two inputs together (`cat([a, b])`) keeps its frames at the smaller sizes too
        smaller = _spread(export, 2, batch, {**forced, **single}, limit, avoid, {**least, **jointly}, steps=steps)
    candidates = [smaller] + [_spread(export, step, batch, forced, limit, avoid, least, grow, steps)
                              for step in (1, *range(3, wanted + 8))]
    for other in candidates:
        if len(bindings) >= wanted:
            break
        if other not in bindings:
            bindings.append(other)
    thresholds = size_thresholds(model) + inner_thresholds(model) + window_thresholds(windows)
    past = _past_thresholds(bindings, thresholds, batch, forced, limit, avoid, least, steps)
    # past a threshold is more evidence, not the sizes deployed: one over the memory budget is not tried
    return [*bindings, past] if past and past not in bindings and (fits is None or fits(past)) else bindings


def _past_thresholds(bindings: list[dict[str, int]], thresholds: list[tuple[int, tuple[str, ...]]],
                     batch: set[str], forced: dict[str, int], limit: int | None, avoid: set[int],
                     least: dict[str, int], steps: dict[str, tuple[int, int]]) -> dict[str, int] | None:
    """The export binding with, for each threshold that no binding takes a size it meets past, the first free
    non-batch dim among those it meets set just past it (within the limit): one dim is enough to cross it, and a
    sum of several past it could leave the model (a cache's length plus the new tokens past a position table).
    None when no threshold needs it, or none can."""
    export, taken = bindings[0], {size for binding in bindings for size in binding.values()} | avoid
    moved = dict(export)
    for threshold, dims in sorted(thresholds, reverse=True):
        free = [d for d in dims if d in export and d not in batch and d not in forced]
        if not free or any(b.get(d, 0) > threshold for b in [*bindings, moved] for d in dims):
            continue
        name = free[0]
        floor = max(least.get(name, 1), threshold + 1)
        size = _free(floor, export[name], taken, limit, floor, steps.get(name, ANY))
        if size > threshold:  # a limit may stop it short: then no binding goes past this one
            moved[name] = size
            taken.add(size)
    return moved if moved != export else None


def is_smaller(binding: dict[str, int], export: dict[str, int], batch: set[str]) -> bool:
    """True when some non-batch dim is below its export size (a front end may need a minimum length)."""
    return any(size < export.get(name, size) for name, size in binding.items() if name not in batch)


def reference_bindings(model: onnx.ModelProto, options, export: dict[str, int],
                       batch: list[str]) -> list[dict[str, int]]:
    """Sizes probed only when the others left a dim without a reference: the `batch` dims (those along which the
    original computes samples independently, see graphfix.validate.consistency) at a size of their own, neither 1
    nor a size of the graph, with every other dim at its export size, where an original with a baked length
    still runs."""
    forced = forced_sizes(model, options)
    free_batch = [name for name in export if name in batch and name not in forced]
    if not free_batch:
        return []
    taken, steps = set(export.values()) | fixed_sizes(model), input_steps(model)
    binding = dict(export)
    for name in free_batch:
        binding[name] = _free(3, export[name], taken, None, 2, steps.get(name, ANY))
        taken.add(binding[name])
    return [binding]


def coincidence(model: onnx.ModelProto, binding: dict[str, int], probed: set[str], derived: set[str] = frozenset(),
                static: set[int] | None = None, export: dict[str, int] | None = None) -> str:
    """Why the original may run at `binding` by coincidence rather than for the right reason ('' when it cannot):
    a probed dim at 1 (every broadcast of it succeeds), two probed dims equal (a batch/time mix-up runs), or a
    probed dim equal to a static size of the graph (a mask's time axis lined up with 32 features), unless it is at
    its `export` size (a size baked there shows in the inferred shapes as a static one). `derived` dims are
    computed from others (graphfix.analysis.sizes.tied_dims) and may equal them."""
    static = met_sizes(model) if static is None else static
    dims = {name: size for name, size in binding.items() if name in probed}
    ones = sorted(name for name, size in dims.items() if size == 1)
    if ones:
        return f"{', '.join(ones)} = 1"
    own = {name: size for name, size in dims.items() if name not in derived}
    seen: dict[int, str] = {}
    for name, size in own.items():
        if size in seen:
            return f"{seen[size]} = {name} = {size}"
        seen[size] = name
    at_export = {name for name, size in own.items() if export is not None and export.get(name) == size}
    met = sorted(f"{name} = {size}" for name, size in own.items() if size in static and name not in at_export)
    return f"{', '.join(met)}, a static size of the graph" if met else ""


def _spread(export, step: int, batch: set[str], forced: dict[str, int], limit: int | None,
            avoid: set[int], least: dict[str, int], grow: dict[str, int] | None = None,
            steps: dict[str, tuple[int, int]] | None = None) -> dict[str, int]:
    """One size per dim around its export size, all different from each other and from the graph's fixed sizes,
    none below the least size the model accepts, each k n + c for its `steps` (k, c); a larger one at least `grow` past
    it."""
    taken: set[int] = set(forced.values()) | avoid  # not `taken | avoid` per dim: a copy of every size taken
    binding = dict(forced)
    for name, size in export.items():
        if name in forced:
            continue
        cap = None if name in batch else limit
        floor = max(least.get(name, 1), 2)  # 1 only where asked for: the batch-1 binding
        binding[name] = _free(max(_around(size, step, (grow or {}).get(name, 1)), floor), size, taken, cap, floor,
                              (steps or {}).get(name, ANY))
        taken.add(binding[name])
    return {name: binding[name] for name in export}


def _around(export_size: int, step: int, grow: int = 1) -> int:
    """Step 1 larger (by `grow` at least), step 2 smaller, then larger again: odd where the export size is even."""
    if step == 1:
        return export_size + max(3, grow)
    if step == 2:
        return (export_size // 2) | 1 if export_size > 2 else 1
    return 2 * export_size + 2 * step - 1


def _up(size: int, step: tuple[int, int]) -> int:
    """The least k n + c at or above `size`, for `step` (k, c)."""
    k, c = step
    return size + (c - size) % k


def _free(start: int, export_size: int, taken: set[int], cap: int | None, floor: int = 1,
          step: tuple[int, int] = (1, 0)) -> int:
    """The first size k n + c (`step`: (k, c)) from `start` (up, then down from `cap` to `floor`) not taken, not the
    export size nor a multiple of it."""
    def usable(size: int) -> bool:
        multiple = size > export_size > 1 and size % export_size == 0
        return size >= floor and size not in taken and size != export_size and not multiple and \
            (not cap or size <= cap)

    k = step[0]
    start = _up(min(start, cap) if cap else start, step)
    for size in itertools.chain(range(start, start + 64 * k, k), range(start - k, floor - 1, -k)):
        if usable(size):
            return size
    return start


def shape_moved(model: onnx.ModelProto, options, first: dict[str, int]) -> dict[str, int] | None:
    """`first` with the batch dims that `--shape` (not an `--input` array) fixed moved: to 1, or to 2 where it was
    given 1. `--shape` gives the sizes the model takes, not its only size: the written model still declares the dim
    dynamic, and a model run at one size only is compared with nothing but itself. Longformer's `as_strided`,
    exported with TorchScript, reads strides baked at the export size: at `--shape input_ids=2x32` it runs 9% off
    PyTorch with nothing to show it, and at batch 1 its Gather fails (tests/frontends/test_given_shapes.py). Its
    other dims stay as given: a length or an image size is often given to keep inside a domain the graph does not
    show (RoBERTa's positions, a cumulative sum of its mask, index 514 rows; timm's MaxViT takes multiples of its
    window, 64 pixels here), and a size moved past it failed where PyTorch fails too (helpers 90 and 92). None
    when no batch dim is fixed."""
    given = {name for vi in graph_inputs(model) if vi.name in options.inputs
             for name in dim_names(vi) if isinstance(name, str)}
    batch, steps = batch_dims(model), input_steps(model)
    moved = dict(first)
    for vi in graph_inputs(model):
        if vi.name in options.inputs:
            continue
        for name, size in zip(dim_names(vi), options.shapes.get(vi.name) or (), strict=False):
            if isinstance(name, str) and size is not None and name in batch and name not in given and name in first:
                moved[name] = _up(1 if size > 1 else 2, steps.get(name, ANY))
    return moved if moved != first else None


def forced_sizes(model: onnx.ModelProto, options) -> dict[str, int]:
    """Dims fixed by the user: the shapes of given input values and --shape entries."""
    forced: dict[str, int] = {}
    for vi in graph_inputs(model):
        names = dim_names(vi)
        given = options.inputs.get(vi.name)
        fixed = given.shape if given is not None else options.shapes.get(vi.name)
        for name, size in zip(names, fixed or (), strict=False):
            if isinstance(name, str) and size is not None:
                forced[name] = int(size)
    return forced


def export_sizes(model: onnx.ModelProto, options, forced: dict[str, int],
                 least: dict[str, int] | None = None, steps: dict[str, tuple[int, int]] | None = None
                 ) -> dict[str, int]:
    """The export-time binding: given sizes, else the batch default and the baked-size hint (within limits), raised
    to the least size the model accepts (`least`, and `joint_floors` for lengths read together: see
    graphfix.analysis.sizes.domain) and to a size k n + c of its `steps` (graphfix.analysis.sizes.domain.input_steps).
    """
    least, steps = least or {}, steps or {}
    hint, limit = baked_size_hint(model), size_limit(model)
    other = min(hint or DEFAULT_OTHER, limit) if limit else hint or DEFAULT_OTHER
    # guessed lengths differ from the batch, from each other and from the graph's fixed sizes: equal dims hide
    # mix-ups, and a length equal to a weight's dim lets a wrong broadcast run
    taken = {DEFAULT_BATCH, *forced.values(), *options.trace_sizes.values(), *fixed_sizes(model)}
    sizes: dict[str, int] = {}
    for vi in graph_inputs(model):
        named = batch_named(dim_names(vi))
        for axis, name in enumerate(dim_names(vi)):
            if not isinstance(name, str) or name in sizes:
                continue
            if name in forced:
                sizes[name] = forced[name]
            elif name in options.trace_sizes:
                sizes[name] = options.trace_sizes[name]
            elif axis == 0 or name in named:
                sizes[name] = _up(max(DEFAULT_BATCH, least.get(name, 1)), steps.get(name, ANY))
            else:
                floor = least.get(name, 1)
                sizes[name] = _free(max(other, floor), 0, taken, limit, floor, steps.get(name, ANY))
                taken.add(sizes[name])
    # guessed lengths that a Conv reads together (`cat([a, b])`) grow together until it has its frames
    batch = batch_dims(model)
    guessed = {name: size * 64 for name, size in sizes.items()
               if name not in forced and name not in options.trace_sizes and name not in batch}
    return {**sizes, **joint_floors(model, sizes, guessed)}


def trace_sizes(model: onnx.ModelProto, trace_shapes) -> dict[str, int]:
    """Symbolic dim name -> export-time size, from --trace-shape NAME=2x400 and the inputs' dim names."""
    sizes: dict[str, int] = {}
    for graph_input in model.graph.input:
        shape = trace_shapes.get(graph_input.name)
        dims = graph_input.type.tensor_type.shape.dim
        for dim, size in zip(dims, shape or (), strict=False):
            if dim.dim_param and size is not None:
                sizes.setdefault(dim.dim_param, int(size))
    return sizes
