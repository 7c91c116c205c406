"""Anchoring the probe sizes on a size the model is known to run at.

Without `--trace-shape`, the export-time size is a guess, and a guess can be too small for the model: a
convolutional front end (HuBERT, wav2vec2) needs hundreds of samples before its first frame. Failures at such a
size are the model's own limits, not export bugs, and reporting them would flag healthy models. So when the
guessed first binding fails, the guessed non-batch dims are doubled until the model runs; that binding becomes
the export size the other sizes are derived from. If no size runs, the guess stays and its failures are real
findings (a broadcast mismatch fails at every size). Growing stops before its runs would pass GROW_BUDGET_S
(each doubling is taken to multiply the last run's time by its growth in elements), and a grown run that runs past
what is left of it is stopped: a model that fails at every size (a patch count baked for 32x32 images) would
otherwise run on ever larger inputs, seconds each, before its failure is reported, and a grown run slowed by a busy
machine would end the runner's runs at the run budget, blaming time instead of the model.

An export size given (`--trace-shape`) is known; one solved from the graph is known only where the original runs
there (`known_export_size`), for repair's proof and diagnose's probe alike.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import onnx

from graphfix.analysis.broadcast import batch_named
from graphfix.validate.budget import NotProbed
from graphfix.validate.footprint import Footprint
from graphfix.validate.graph_sizes import declared_sizes
from graphfix.validate.inputs import (
    ValidationOptions,
    dim_names,
    graph_inputs,
    probe_sizes,
    synthesize_inputs,
)
from graphfix.validate.runner import ModelRunner

MAX_DOUBLINGS = 8  # 12 -> 3072: a few seconds of audio at 16 kHz after the front end's strides
MAX_ELEMENTS = 1 << 24  # per input, so that growing never asks for gigabytes
GROW_BUDGET_S = 2.0  # the runs at grown sizes, all together: a front end's minimum runs in milliseconds
MIN_RUN_S = 0.5  # the least a grown run is given (its own bound: past it, growing stops and the probe goes on)


Guard = Callable[[dict[str, np.ndarray]], None]  # raises NotProbed for feeds the probe must not run


def anchored(runners: list[ModelRunner], model: onnx.ModelProto, options: ValidationOptions,
             guard: Guard | None = None) -> ValidationOptions:
    """`options` whose trace sizes start the probe at a binding one of `runners` runs (unchanged when the first
    guess runs, when sizes are known, or when no grown size runs either). A size `guard` refuses is not run."""
    first = probe_sizes(model, options)[0]
    growable = _guessed_dims(model, options)
    if not growable:
        return options
    started = time.monotonic()
    if any(_runs(r, model, first, options, guard) for r in runners):
        return options
    binding, spent = dict(first), time.monotonic() - started
    last, growth = spent, 2 ** len(growable)  # each doubling multiplies the elements, and about the run time
    for _ in range(MAX_DOUBLINGS):
        binding = {name: size * 2 if name in growable else size for name, size in binding.items()}
        if _too_large(model, binding, options) or spent + last * growth > GROW_BUDGET_S:
            break
        started = time.monotonic()
        budget = max(GROW_BUDGET_S - spent, MIN_RUN_S)  # each runner's grown run; past it, growth ends, not the probe
        if any(_runs(r, model, binding, options, guard, budget) for r in runners):
            return dataclasses.replace(options, trace_sizes={**binding, **options.trace_sizes})
        last = time.monotonic() - started
        spent += last
    return options


def _guessed_dims(model: onnx.ModelProto, options: ValidationOptions) -> set[str]:
    """Non-batch symbolic dims whose size nobody gave: neither --trace-shape, --shape nor an --input value."""
    given = set(options.trace_sizes)
    guessed: set[str] = set()
    for vi in graph_inputs(model):
        fixed = options.shapes.get(vi.name) or ()
        named = batch_named(dim_names(vi))
        for axis, name in enumerate(dim_names(vi)):
            user_sized = vi.name in options.inputs or (axis < len(fixed) and fixed[axis] is not None)
            if isinstance(name, str) and name not in given and not user_sized and axis > 0 \
                    and name not in named:
                guessed.add(name)
    return guessed


def _runs(runner: ModelRunner, model: onnx.ModelProto, binding: dict[str, int], options: ValidationOptions,
          guard: Guard | None, budget_s: float | None = None) -> bool:
    if runner.session is None:
        return False
    try:
        feeds = synthesize_inputs(model, binding, options)
        if guard is not None:
            guard(feeds)
    except NotProbed:  # over the memory budget: this size does not count as one that runs
        return False
    return runner.run(feeds, budget_s=budget_s).ok


def _too_large(model: onnx.ModelProto, binding: dict[str, int], options: ValidationOptions) -> bool:
    for vi in graph_inputs(model):
        count = 1
        for name in dim_names(vi):
            count *= name if isinstance(name, int) else binding.get(name, 1)
        if count > MAX_ELEMENTS:
            return True
    return False


def known_export_size(before: ModelRunner, options: ValidationOptions,
                      footprint: Footprint) -> tuple[ValidationOptions, bool]:
    """Options whose export size is known, and whether it is: given sizes always; solved ones only where the
    original runs at them and none equals a static size the inputs or outputs declare (a broadcast against a
    fixed dim is also what a misaligned mask looks like: solved there, it is a coincidence, not the export size)."""
    solved = {name: size for name, size in options.solved_sizes.items() if name not in options.trace_sizes}
    trial = dataclasses.replace(options, trace_sizes={**solved, **options.trace_sizes}, solved_sizes={})
    if solved and _runs_at_export(before, trial, footprint) and \
            not any(size in declared_sizes(before.proto) for size in solved.values()):
        return trial, True
    return dataclasses.replace(options, solved_sizes={}), bool(options.trace_sizes)


def _runs_at_export(before: ModelRunner, options: ValidationOptions, footprint: Footprint) -> bool:
    if before.session is None:
        return False
    try:
        feeds = synthesize_inputs(before.proto, probe_sizes(before.proto, options)[0], options)
        footprint.check(feeds)
    except NotProbed:
        return False
    return before.run(feeds).ok
