"""Runtime probing for `graphfix diagnose`: run the model at several sizes and report every failing node.

After a node fails, the graph is cut there: the node is removed and its outputs become graph inputs fed with
values of the shape symbolic inference expects (or, when that shape is unknown, everything downstream is
dropped), and the run goes on to find failures further down. Polygraphy's lint stops at the first failure.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from graphfix.analysis.shapes import skeleton
from graphfix.core.errors import GraphfixError
from graphfix.core.rule import FailureSite, Finding, Severity
from graphfix.io.budgets import ENV_RUN_BUDGET
from graphfix.io.loading import LoadedModel
from graphfix.validate.anchor import anchored, known_export_size
from graphfix.validate.budget import NotProbed, check_input_kind, probe_memory_budget
from graphfix.validate.compare import ShapeOracle, drop_contradicted, evaluate_dim, possible_shapes
from graphfix.validate.footprint import Footprint
from graphfix.validate.given import check_given
from graphfix.validate.hints import domain_hint
from graphfix.validate.inputs import (
    ValidationOptions,
    check_shapes,
    graph_inputs,
    probe_sizes,
    synthesize_inputs,
)
from graphfix.validate.minimum import KERNEL_OPS, emptied_at, input_shapes, runs_with_its_batch
from graphfix.validate.runner import (
    ModelRunner,
    ModelSource,
    failing_node,
    load_structure,
    short_message,
    without_downstream,
)
from graphfix.validate.sizes import batch_dims, is_smaller
from graphfix.validate.steps import failed_at_a_step

MAX_CUTS = 32  # failing nodes followed per size
SKIPPED_NAME = "probe-skipped"
SKIPPED_HINT = ("Not a failure of the model: the probe did not run it there, so nothing is proven there (exit 1); "
                "the message says what was skipped and what would let it run.")
DECLARED = "declared shape of"
DECLARED_HINT = ("The model runs but returns a shape it declares otherwise: a size baked while tracing (`int(T)`, "
                 "`math.ceil(T / k) * k`), an output dim named after a size it is not (dynamic_axes: give it a "
                 "name of its own, or the export size with --trace-shape, which shows such a declaration wrong: "
                 "the TorchScript exporter names the dims left out of dynamic_axes itself, at times after the "
                 "batch, as GLPN's depth [batch, batch, W]), "
                 "or a size past the most the model takes (a pad to a maximum length, which GF008 names: the same "
                 "graph as a traced math.ceil, so graphfix cannot tell them apart; `repair` writes it unchanged "
                 "with exit 1).")
DEPLOYED = "deployed session"
DEPLOYED_HINT = ("onnxruntime optimizes a default session's graph (constant folding, fusions) and infers its shapes "
                 "again: the node named in its message gets a shape there that contradicts one the model holds. A "
                 "session with graph_optimization_level ORT_DISABLE_ALL loads it; re-export, or fix the node's "
                 "inputs, so that a default session does.")


@dataclass
class RuntimeFailure:
    node: str  # node name from the ORT error, e.g. '/Where'
    op_type: str
    message: str  # the ORT error, first line
    sizes: dict[str, int]  # the binding it failed at
    shapes: dict[str, list[int]] = field(default_factory=dict)  # input shapes of the failing node
    rule: str = "GF000"
    severity: Severity = Severity.ERROR  # WARNING for suspicious outputs (GF005)
    tensors: list[str] = field(default_factory=list)
    skipped: bool = False  # not a failure of the model: the probe could not run it (message says why)
    key: str = ""  # what makes two failures one finding, when neither a node nor the message does
    hint: str = ""  # what to do, where the rule's runtime hint does not say it
    knock_on: bool = False  # reads values fabricated at an earlier failure's cut, at the same size

    def to_finding(self) -> Finding:
        from graphfix.core.registry import find_rule

        rule = find_rule(self.rule)
        fallback = find_rule("GF000")
        if self.skipped:  # an error because nothing is proven at these sizes, not a failure of the model
            return Finding(self.rule, SKIPPED_NAME, self.severity, self.message, tensors=list(self.tensors),
                           hint=SKIPPED_HINT)
        return Finding(
            rule=self.rule,
            name=rule.name if rule else "runtime-failure",
            severity=self.severity,
            message=self._sentence(),
            nodes=[self.node] if self.node else [],
            tensors=list(self.tensors),
            hint=self.hint or (rule and rule.runtime_hint) or (fallback.runtime_hint if fallback else ""),
            shapes=dict(self.shapes),
        )

    def _sentence(self) -> str:
        if self.severity is not Severity.ERROR or self.skipped:
            return self.message
        if self.key == DEPLOYED:
            return ("onnxruntime runs the model with its graph optimizations off, but a default session (optimized) "
                    f"cannot load it: {short_message(self.message)}")
        if self.key.startswith(DECLARED):
            return f"the model runs at sizes {self.sizes}, but {self.message}"
        if self.rule == "GF001" and not self.node:
            return f"inputs {self.tensors} are fed but the graph does not declare them: {short_message(self.message)}"
        where = f"{self.op_type} node '{self.node}'" if self.node else "the model"
        return f"{where} fails at sizes {self.sizes}: {short_message(self.message)}"


def probe(model: ModelSource | LoadedModel, options: ValidationOptions) -> list[RuntimeFailure]:
    """Every node that fails at some probe size (first size each), then warnings about suspicious outputs. A
    loaded model is probed as it was checked (its proto, its held data files): its file is not read again."""
    if isinstance(model, LoadedModel):
        proto, base_dir, files = model.proto, model.base_dir, model.files
    else:
        proto, base_dir, files = load_structure(model)
    check_shapes(proto, options.shapes, optional=options.configured)
    options = dataclasses.replace(options, inputs=check_given(proto, options.inputs))  # cast once
    try:
        for value in graph_inputs(proto):
            if value.name not in options.inputs:
                check_input_kind(value)  # before symbolic inference, which can loop on such inputs
    except NotProbed as exc:
        return [RuntimeFailure("", "", str(exc), {}, skipped=True)]
    proto = with_node_names(proto)
    types = _inferred_types(proto)
    footprint = Footprint.of(proto, types)  # sizes whose tensors would exceed the memory budget are skipped
    failures: dict[str, RuntimeFailure] = {}
    clean_runs: list[dict[str, np.ndarray]] = []
    whole = ModelRunner(proto, base_dir, files=files)  # one session for the uncut model, shared by every size
    if whole.not_probed:  # the budget kept onnxruntime from loading it: nothing is run
        return [RuntimeFailure("", "", whole.not_probed, {}, skipped=True)]
    options, _ = known_export_size(whole, options, footprint)  # a solved export size, as repair's proof takes it
    options = anchored([whole], proto, options, guard=footprint.check)
    sizes = probe_sizes(proto, options, moved=footprint.fits)
    below: dict[str, RuntimeFailure] = {}  # failures seen only below the export size so far
    skipped: dict[str, list[dict[str, int]]] = {}  # why -> the sizes not run for that reason
    declared = possible_shapes(proto)  # what repair's proof holds the unchanged model to, as it does
    for binding in sizes:
        try:
            feeds = synthesize_inputs(proto, binding, options)
            footprint.check(feeds)
        except NotProbed as exc:  # an error (nothing proven at this size), worded as what was skipped
            skipped.setdefault(str(exc), []).append(binding)
            continue
        found, outputs = _failures_at(whole, feeds, binding, types, options)
        if not found and outputs is not None:  # the whole model ran (a cut graph's outputs are partly made up)
            clean_runs.append(outputs)
            if binding is sizes[0]:
                drop_contradicted(declared, outputs, binding, options.trace_sizes)
            found = _contradicted(declared, outputs, binding, proto)
        smaller = is_smaller(binding, sizes[0], batch_dims(proto))
        limit: bool | None = None  # whether this size's batch runs at the export's lengths: asked once, if needed
        roots: list[bool] = []  # whether each failure not fed by another's cut met the minimum
        for failure in found:
            if failure.knock_on:  # a consequence of the failures before it: below the minimum where they all are
                minimum = bool(roots) and all(roots)
            else:
                # an input shorter than a kernel, PyTorch's failure too, or that a window emptied before it
                minimum = smaller and (failure.op_type in KERNEL_OPS or emptied_at(
                    whole, failure.node, feeds, _feeds_or_none(proto, sizes[0], options)))
                if minimum and limit is None:
                    limit = runs_with_its_batch(whole, proto, binding, sizes[0], options, footprint)
                # one that fails at the export's lengths too (SepFormer's Squeeze at batch 1) meets no minimum length
                minimum = minimum and bool(limit)
                roots.append(minimum)
            (below if minimum else failures).setdefault(failure.key or failure.node or failure.message, failure)
        if any(ENV_RUN_BUDGET in failure.message for failure in found):
            break  # a run past its time budget: other sizes would take as long
    # A kernel that fails only below the export size meets the model's minimum size (a conv front end), unless
    # the model fails at the export size too: then the smaller size is no evidence of a limit. Any other node that
    # fails at a smaller size fails there (Swin's window padding baked: a Reshape at 273x289, grown from 544x576).
    limited = not any(f.sizes == sizes[0] for f in failures.values())
    failures.update({key: f for key, f in below.items() if key not in failures and not limited})
    failures.update({why: _skipped(why, bindings) for why, bindings in skipped.items()})
    for failure in failures.values():
        if not failure.skipped and failed_at_a_step(proto, failure.node, failure.sizes):
            failure.rule = "GF000"  # shapes that agree only at k n + c meet there: no constant is the cause
        failure.hint = failure.hint or ("" if failure.skipped else domain_hint(proto, failure.sizes, options.shapes))
    if whole.session is not None and (error := _deployed_load_error(proto, base_dir, files)):
        failures[DEPLOYED] = RuntimeFailure("", "", error, {}, key=DEPLOYED, hint=DEPLOYED_HINT) \
            if not isinstance(error, NotProbed) else _skipped(str(error), [{}])
    return [*failures.values(), *suspect_outputs(clean_runs)]


def _deployed_load_error(proto: onnx.ModelProto, base_dir, files) -> str | NotProbed | None:
    """Why a session with onnxruntime's graph optimizations on (as a default one, as repair validates what it
    writes) cannot load a model the probe ran with them off (helper 82: timm's EVA exported with TorchScript, a
    Concat's shape merge); None where it loads. Only loaded, never run (its runs are the probe's), and without its
    large weights, each a graph input of its type and dims: their bytes fold into nothing a shape depends on, and
    a second copy of BERT's cost 0.9 GB and 2 s. Where that fails, the whole model is loaded so before it is
    reported: an op that takes only constant weights (a packed MatMulNBits) fails without them. NotProbed where
    it did not load within the run budget (folding constants: helper 104), a note."""
    light = skeleton(proto)
    light.graph.value_info.extend(proto.graph.value_info)  # what the export declares, as a session reads it
    heavy = [t for t in light.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    listed = {vi.name for vi in light.graph.input}
    light.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in heavy if t.name not in listed)
    kept = [t for t in light.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    del light.graph.initializer[:]
    light.graph.initializer.extend(kept)
    for model in (light, proto):
        runner = ModelRunner(model, base_dir, files=files, deployed=True)  # a Constant's, a function's external data
        error, runner.session = runner.load_error, None
        if runner.not_probed or not error:
            return NotProbed(runner.not_probed) if runner.not_probed else None
    return error


def _contradicted(declared: dict[str, list | None], outputs: dict[str, np.ndarray], binding: dict[str, int],
                  proto: onnx.ModelProto) -> list[RuntimeFailure]:
    """The outputs of a clean run whose shape contradicts the model's declaration (a dim named like an input's, a
    fixed dim, the rank): the model runs, but not as it says it does. Repair refuses such a model unchanged."""
    oracle = ShapeOracle(proto, declared, says="the model declares")
    return [RuntimeFailure("", "", problem, binding, tensors=[name], key=f"{DECLARED} {name}",
                           hint=DECLARED_HINT)
            for name in outputs for problem in oracle.mismatches({name: outputs[name]}, binding)]


def _skipped(why: str, bindings: list[dict[str, int]]) -> RuntimeFailure:
    sizes = ", ".join(str(binding) for binding in bindings if binding)
    return RuntimeFailure("", "", f"{why}: {sizes}" if sizes else why, bindings[0], skipped=True)


def _failures_at(whole: ModelRunner, feeds, binding, types, options) -> tuple[list[RuntimeFailure], dict | None]:
    proto, base_dir = whole.proto, whole.base_dir
    found = _unknown_feeds(proto, base_dir, feeds, binding, options)
    current, runner = proto, whole
    fed: set[str] = set()  # tensors computed from values fabricated at a cut
    for _ in range(MAX_CUTS):
        result = runner.run(feeds)
        if result.ok:
            return found, result.outputs
        where = failing_node(result.error or "")
        node = _node_named(current, where[1]) if where else None
        if node is None:
            found.append(RuntimeFailure("", "", result.error or "", binding, rule="GF000"))
            return found, None
        shapes = input_shapes(runner, current, node, feeds)
        knock_on = bool(fed.intersection(node.input))
        found.append(
            RuntimeFailure(
                node.name,
                node.op_type,
                result.error or "" if not knock_on else f"{result.error} (downstream of an earlier failure: the "
                "values it reads were fabricated after that one, so this may be its consequence)",
                binding,
                shapes,
                # a failure fed by fabricated values proves nothing about its own cause: a warning beside the
                # error it follows (once onnxruntime's symbolic shapes reached weight-heavy models too, a Swin's
                # baked window padding listed three such errors after its two)
                "GF000" if knock_on else rule_for(node, result.error or "", current),
                severity=Severity.WARNING if knock_on else Severity.ERROR,
                tensors=list(node.output),
                knock_on=knock_on,
            )
        )
        current, fabricated = cut_at(current, node, binding, types)
        if not current.graph.output:
            return found, None  # nothing downstream of the failure is left to run
        feeds = {**feeds, **fabricated}
        fed = _downstream(current, fed | set(fabricated))
        runner = ModelRunner(current, base_dir)
    return found, None


def _feeds_or_none(proto: onnx.ModelProto, binding: dict[str, int], options) -> dict[str, np.ndarray] | None:
    """The inputs at `binding`, or None where none can be made (the export size's, for `emptied_at`)."""
    try:
        return synthesize_inputs(proto, binding, options)
    except GraphfixError:
        return None


def _downstream(model: onnx.ModelProto, sources: set[str]) -> set[str]:
    """`sources` and every tensor computed from them (nodes are in topological order)."""
    reached = set(sources)
    for node in model.graph.node:
        if reached.intersection(node.input):
            reached.update(node.output)
    return reached


def _unknown_feeds(proto, base_dir, feeds, binding, options) -> list[RuntimeFailure]:
    """Inputs the caller supplies that the graph does not declare (pruned by the exporter)."""
    declared = {i.name for i in graph_inputs(proto)}
    extra = {k: v for k, v in options.inputs.items() if k not in declared}
    if not extra:
        return []
    result = ModelRunner(proto, base_dir).run({**feeds, **extra}, strict_feeds=True)
    message = result.error or f"inputs {sorted(extra)} are not graph inputs"
    return [RuntimeFailure("", "", message, binding, rule=_undeclared_inputs_rule(), tensors=sorted(extra))]


def _undeclared_inputs_rule() -> str:
    """The rule that claims inputs the graph does not declare (`Rule.claims_undeclared_inputs`: GF001)."""
    from graphfix.core.registry import load_rules

    return next((rule.code for rule in load_rules()[0] if rule.claims_undeclared_inputs), "GF000")


def rule_for(node: onnx.NodeProto, message: str, model: onnx.ModelProto) -> str:
    """The rule a runtime failure belongs to: the first, by `runtime_order`, that claims it; else GF000."""
    from graphfix.core.registry import load_rules

    site = FailureSite(node, message, model)
    for rule in sorted(load_rules()[0], key=lambda r: (r.runtime_order, r.code)):
        if rule.claims_failure(site):
            return rule.code
    return "GF000"


def with_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model, with `<op>_<index>` names given to unnamed nodes so errors can point at them."""
    if all(node.name for node in model.graph.node):
        return model
    named = onnx.ModelProto()
    named.CopyFrom(model)
    taken = {node.name for node in named.graph.node}
    for index, node in enumerate(named.graph.node):
        if not node.name:
            node.name = next(n for n in (f"{node.op_type}_{index}", f"{node.op_type}_{index}_") if n not in taken)
            taken.add(node.name)
    return named


def _node_named(model: onnx.ModelProto, name: str) -> onnx.NodeProto | None:
    return next((node for node in model.graph.node if node.name == name), None)


def cut_at(model, node, binding, types) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Remove `node`; feed its outputs with fabricated values, or drop what depends on them when their shape
    is not known at this binding."""
    fabricated = {}
    for name in node.output:
        value = _fabricate(name, binding, types)
        if value is None:
            return without_downstream(model, node), {}
        fabricated[name] = value
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    del cut.graph.node[:]
    cut.graph.node.extend(n for n in model.graph.node if n.name != node.name)
    for name, value in fabricated.items():
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        cut.graph.input.append(helper.make_tensor_value_info(name, elem, value.shape))
    return cut, fabricated


def _fabricate(name: str, binding, types) -> np.ndarray | None:
    if name not in types:
        return None
    elem_type, shape = types[name]
    dims = [evaluate_dim(d, binding) for d in shape] if shape is not None else None
    if dims is None or any(d is None or d < 0 for d in dims):  # negative: a window longer than its input
        return None
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    if math.prod(dims) * np.dtype(dtype).itemsize > probe_memory_budget():
        return None  # over the memory budget: what depends on it is dropped instead
    return np.ones(dims, dtype=dtype)


def _inferred_types(model: onnx.ModelProto) -> dict[str, tuple[int, list | None]]:
    """Tensor name -> (elem type, symbolic shape) from onnxruntime's symbolic shape inference, time bounded:
    without a shape, a failing node's downstream is dropped instead of fed."""
    from graphfix.analysis.shapes import skeleton, symbolic_inference, value_info_shape

    inferred = symbolic_inference(skeleton(model), merge=True)
    inputs = {i.name for i in model.graph.input}
    return {name: (vi.type.tensor_type.elem_type, value_info_shape(vi))
            for name, vi in inferred.value_info.items() if name not in inputs}


def suspect_outputs(runs: list[dict[str, np.ndarray]]) -> list[RuntimeFailure]:
    """Outputs the rules (`Rule.suspect_outputs`: GF005) find unusable in the clean runs, as their findings."""
    from graphfix.core.registry import load_rules

    return [RuntimeFailure("", "", why, {}, rule=rule.code, severity=rule.severity, tensors=[output])
            for rule in load_rules()[0] for output, why in (rule.suspect_outputs(runs) if runs else ())]
