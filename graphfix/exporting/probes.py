"""The sizes `graphfix.export` checks a file at when the caller gives no `probe_args`: the example's, each
requested dynamic dim doubled and tripled (a model's own divisibility kept), and sizes off that lattice, where a
branch the trace froze shows (parity, a remainder, batch 1, a length cap)."""

from __future__ import annotations

import inspect
from pathlib import Path


def front_end_strides(raw: Path, call: tuple[tuple, dict], input_names=None) -> dict[tuple[int, int], int]:
    """(arg index, axis) -> how far that dim must grow for its strided front end's output to grow by a position
    (graphfix.analysis.sizes.domain), from the export's own graph."""
    import onnx

    from graphfix.analysis.sizes.domain import input_strides
    from graphfix.core.errors import GraphfixError
    from graphfix.exporting.verify import call_inputs, call_tensors, named_dims

    exported = onnx.load_model(str(raw), load_external_data=False)
    aligned = call_inputs(exported, input_names)
    dims = named_dims(aligned, [t.shape for t in call_tensors(*call)])
    try:
        strides = input_strides(exported, {name: size for name, (_, _, size) in dims.items()})
    except GraphfixError:  # an analysis past its budget: probes one past the size instead
        return {}
    return {(pos, axis): strides[dim.dim_param] for pos, meta in enumerate(aligned.graph.input)
            for axis, dim in enumerate(meta.type.tensor_type.shape.dim) if dim.dim_param in strides}


def dim_names(input_names, dynamic_axes) -> dict[tuple[int, int], str]:
    """(arg index, axis) -> the name dynamic_axes gives it, where it gives one."""
    names = list(input_names or [])
    return {(names.index(name), axis): dim for name, axes in (dynamic_axes or {}).items() if name in names
            and isinstance(axes, dict) for axis, dim in axes.items()}


def requested_dynamic_dims(model, args: tuple, input_names, dynamic_axes, dynamic_shapes) -> dict[int, set[int]]:
    """Positional arg index -> dims the user asked to keep dynamic (dynamic_axes or dynamic_shapes)."""
    requested: dict[int, set[int]] = {}
    if dynamic_axes:
        names = list(input_names or [])
        for name, axes in dynamic_axes.items():
            if name in names:
                requested.setdefault(names.index(name), set()).update(axes if isinstance(axes, list | tuple)
                                                                       else axes.keys())
    if dynamic_shapes:
        if isinstance(dynamic_shapes, dict):
            params = list(inspect.signature(model.forward).parameters)
            items = [(params.index(k), v) for k, v in dynamic_shapes.items() if k in params]
        else:
            items = list(enumerate(dynamic_shapes))
        for index, spec in items:
            if spec:
                requested.setdefault(index, set()).update(spec.keys() if isinstance(spec, dict) else
                                                          [i for i, d in enumerate(spec) if d is not None])
    return requested


def default_probes(call: tuple[tuple, dict], requested: dict[int, set[int]], names: dict[tuple[int, int], str],
                strides: dict[tuple[int, int], int]) -> list[tuple]:
    """The example call with every requested dynamic dim doubled, then tripled (keeping divisibility), then off
    that lattice, where a branch on parity, a remainder or batch 1 that the trace froze shows: batch 1 (a dim
    named like a batch, or else axis 0) with every other dim one position past its example's size (its strided
    front end's stride, or 1); the example's batch with every other dim half a stride past; batch 1 alone; the
    example's batch with every other dim half a stride shorter (a model capped at its example's length), and at
    one (a pad that guards short inputs). As args
    tuples ending with their keyword arguments (torch.onnx.export's convention). `names`: (arg index, axis) ->
    the dim's name; `strides`: (arg index, axis) -> its stride."""
    def batch(pos: int, axis: int) -> bool:
        return _batch_like(names, pos, axis)

    def past(pos: int, axis: int, size: int) -> int:  # batch 1, the others a stride past
        return 1 if batch(pos, axis) else size + strides.get((pos, axis), 1)

    def half_past(pos: int, axis: int, size: int) -> int:  # the others half a stride past (at least one)
        return size if batch(pos, axis) else size + max(1, strides.get((pos, axis), 1) // 2)

    def batch_one(pos: int, axis: int, size: int) -> int:  # batch 1 alone
        return 1 if batch(pos, axis) else size

    def shorter(pos: int, axis: int, size: int) -> int:  # the others half a stride before (at least one)
        return size if batch(pos, axis) else max(1, size - max(1, strides.get((pos, axis), 1) // 2))

    def smallest(pos: int, axis: int, size: int) -> int:  # the others at one (a guard for short inputs)
        return size if batch(pos, axis) else 1

    sizes = [lambda pos, axis, size: size * 2, lambda pos, axis, size: size * NEAR_SCALE, past, half_past,
             batch_one, shorter, smallest]
    return _resized_sets(call, requested, sizes)


FAR = (5, 8)  # times the example's lengths, where an unsafe guess must also hold
NEAR_SCALE = 3  # the default probes grow a length to 3 times the example's at most
FAR_MULTIPLE = 16  # and the first multiple of 16 past 5 times: a pad to chunks of 2, 4, 8 or 16 pads 0 there
FAR_ELEMENTS = 1 << 22  # a far probe's tensors stay below this many elements each (attention grows with its square)
FAR_POSITIONS = 1 << 12  # the far sizes the default proof takes span at most this many positions in the dims grown
# (an attention over them holds 16M scores a head: helper 161's 16000 frames made onnxruntime's 8 GB, a refusal)


def growing_dims(requested: dict[int, set[int]], names: dict[tuple[int, int], str]) -> dict[int, set[int]]:
    """The requested dynamic dims but the batch (named so, or an unnamed axis 0; `N` is grown, as a length it may
    be, as a batch it costs little): the lengths an unsafe guess may follow only part of the way."""
    from graphfix.analysis.broadcast import BATCH_NAME

    grows = {pos: {axis for axis in axes if not _batch_like(names, pos, axis, BATCH_NAME)}
             for pos, axes in requested.items()}
    return {pos: axes for pos, axes in grows.items() if axes}


def far_probes(call: tuple[tuple, dict], grows: dict[int, set[int]],
               names: dict[tuple[int, int], str] | None = None) -> list[tuple]:
    """The example call with the dims `grows` names at 5 and at 8 times their size, and at the first multiple of
    FAR_MULTIPLE from 5 times; and, where that spans more than FAR_POSITIONS positions, with each dim grown as far
    as they allow (`_filling_scales`); each set only while every tensor stays under FAR_ELEMENTS: where an unsafe
    repair's guess and what the module computes part only past the default probes (a mask window wider than three
    times the example's length is all True there, as no mask is; a pad of a whole chunk and a round-up part only
    at a multiple of the chunk; a cap on a count)."""
    import torch

    sizes = [lambda pos, axis, size, k=k: size * k for k in FAR]
    sizes.append(lambda pos, axis, size: -(-size * FAR[0] // FAR_MULTIPLE) * FAR_MULTIPLE)
    scales = _filling_scales(call[0], grows, names or {})
    if any(scale > NEAR_SCALE for scale in scales.values()):  # past the probes, and no more positions than allowed
        sizes.append(lambda pos, axis, size: int(size * scales[pos, axis] + 1e-9) if (pos, axis) in scales else size)
    sets = _resized_sets(call, grows, sizes)
    return [s for s in sets if all(t.numel() < FAR_ELEMENTS for t in s[:-1] if isinstance(t, torch.Tensor))]


def _positions(axes: set[int]) -> set[int]:
    """A tensor's grown dims that count as positions: all but axis 0 where others grow too (the `N` of an NCHW
    image grows as a length might, but it is no position of the image's)."""
    return axes - {0} if len(axes) > 1 else axes


def _filling_scales(args: tuple, grows: dict[int, set[int]], names: dict[tuple[int, int], str]) -> dict:
    """(arg index, axis) -> how many times that dim may grow (to 8) before its tensor spans FAR_POSITIONS positions
    (`_positions`), dims of one name (all unnamed ones alike) by the same: the sizes past the probes that the
    default proof can take where 5 times is too long for it. A cap of 40 tokens on a 16 x 16 image's 4 tokens
    shows at 64 x 64, and at no size to 48 x 48; a text's own cap beside it at 8 times its length."""
    import math

    held = {names.get((pos, 0)) for pos, axes in grows.items() if 0 in axes and len(axes) > 1} - {None}
    fills: dict[str | None, float] = {}
    for pos, axes in grows.items():
        axes = {axis for axis in _positions(axes) if names.get((pos, axis)) not in held}
        if not axes or pos >= len(args) or not hasattr(args[pos], "shape"):
            continue
        span = math.prod(args[pos].shape[axis] for axis in axes)
        fill = (FAR_POSITIONS / span) ** (1 / len(axes)) if span else 1.0
        for key in {names.get((pos, axis)) for axis in axes}:
            fills[key] = min(fills.get(key, FAR[-1]), fill)
    return {(pos, axis): fills[key] for pos, axes in grows.items() for axis in axes
            if (key := names.get((pos, axis))) in fills and key not in held}


def _batch_like(names: dict[tuple[int, int], str], pos: int, axis: int, pattern=None) -> bool:
    """A dim named like a batch (`pattern`, else `batch_named` among its argument's dims), or else axis 0."""
    from graphfix.analysis.broadcast import batch_named

    name = names.get((pos, axis))
    if not name:
        return axis == 0
    if pattern is not None:
        return bool(pattern.search(name))
    return name in batch_named(dim for (at, _), dim in sorted(names.items()) if at == pos)


def _resized_sets(call: tuple[tuple, dict], requested: dict[int, set[int]], sizes) -> list[tuple]:
    """The example call with its requested dims resized by each of `sizes` ((arg index, axis, size) -> size), as
    args tuples ending with the keyword arguments; each distinct set once, none at the example's own sizes."""
    import torch

    from graphfix.exporting.verify import random_like, resized_call

    args, named = call
    generator = torch.Generator().manual_seed(0)
    sets = []
    for size_of in sizes:
        resized = tuple(
            resized_call((arg,), {}, lambda _, t, pos=pos, size_of=size_of: random_like(
                t, [size_of(pos, i, d) if i in requested[pos] else d for i, d in enumerate(t.shape)],
                generator))[0][0]
            if pos in requested else arg
            for pos, arg in enumerate(args))
        shapes = [tuple(t.shape) for t in resized if isinstance(t, torch.Tensor)]
        if shapes != [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)] and \
                all(shapes != [tuple(t.shape) for t in s[:-1] if isinstance(t, torch.Tensor)] for s in sets):
            sets.append((*resized, named))  # the example's own sizes, or a probe's again, only once
    return sets


def few_positions(sets: list[tuple], grows: dict[int, set[int]], example: tuple) -> list[tuple]:
    """Those of the far probe `sets` whose grown dims span at most FAR_POSITIONS positions in every tensor: the
    far sizes cheap enough for every proof (a count of chunks that moves past 3 times the example's length);
    longer ones only for an unsafe guess, which they must settle. An axis 0 the fill leaves at the `example`'s
    size is not counted (`_positions`); grown, it is (helper 163: `N` of a text encoder grown 8 times with its
    length made the proof 10 times slower)."""
    import math

    def span(sizes, pos: int, axes: set[int]) -> int:
        return math.prod(sizes[pos].shape[axis] for axis in axes if axis in _positions(axes)
                         or sizes[pos].shape[axis] != example[pos].shape[axis])

    return [s for s in sets if all(span(s, pos, axes) <= FAR_POSITIONS for pos, axes in grows.items()
                                   if pos < len(s) - 1)]
