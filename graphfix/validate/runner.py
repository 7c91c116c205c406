"""Running a model with onnxruntime on the CPU, without ever loading external weights into Python.

Graph optimizations are disabled: every node then runs as written, so errors name the node of the file (not a
fused one), constant folding cannot hide or move a failure, and intermediate tensors can be exposed as outputs
for bisection. Numerically this is the reference behaviour of each kernel. One exception: a large weight's
Transpose before MatMul runs fused (graphfix.validate.fusion), as onnxruntime runs it by default.

onnxruntime never opens a file: a model given as a Path is opened once and parsed from that descriptor
(graphfix.io.held), and the session is made from the parsed proto. Its external weights are handed over from the
descriptors loading checked and holds: initializers of the main graph as arrays memory-mapped from them (not
copied), other external tensors (a Constant's value, a subgraph's weight) inline, read from them.

A light model (large weights as stubs, see graphfix.io.weights) runs with its weights *fed*: the stubs become graph
inputs and every run passes the weights as numpy arrays, which onnxruntime reads in place. The original and the
repaired model of one validation share those arrays (`FedWeights`): no session copies the weights, and none
reads a file. Weights that a non-standard-domain op may require to be constant stay initializers.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
import threading
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from graphfix.io.budgets import ENV_MAX_MEMORY, ENV_RUN_BUDGET, run_budget_seconds
from graphfix.io.external_data import check_external_data
from graphfix.io.held import DataFiles, held, open_model
from graphfix.io.protos import copy_without_initializers
from graphfix.io.weights import Weight, Weights, has_stubs, is_stub, materialize, resolve, weight_array, weight_proto
from graphfix.validate.budget import NotProbed
from graphfix.validate.fusion import as_written, transposes_fused
from graphfix.validate.sessions import FEEDABLE, error_text, first_line, linked_weights, make_session

ModelSource = onnx.ModelProto | pathlib.Path
NODE_IN_ERROR = re.compile(r"running (\w+) node\. Name:'([^']*)'")
DEPLOYED = " (with onnxruntime's basic graph optimizations, which every default session runs)"
OUT_OF_MEMORY = re.compile(r"bad_alloc|Failed to allocate memory")  # onnxruntime's words for an allocation refused


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray] | None  # None when the run failed
    error: str | None = None  # ORT's message, first line

    @property
    def ok(self) -> bool:
        return self.outputs is not None


def load_structure(source: ModelSource) -> tuple[onnx.ModelProto, pathlib.Path | None, DataFiles | None]:
    """The model proto (external weights left on disk), the folder its external data is relative to, and its data
    files. A file is opened once and parsed from that descriptor; its data files are checked and held open as
    loading does (graphfix.io.held): the caller keeps them for every later read."""
    if isinstance(source, onnx.ModelProto):
        return source, None, None
    path = pathlib.Path(source)
    proto = onnx.load_model_from_string(open_model(path).read())
    base_dir = path.parent.resolve()
    files = held(base_dir)
    check_external_data(proto, base_dir, str(path))
    return proto, base_dir, files


class ModelRunner:
    """One onnxruntime session for one model; `run` never raises for model errors."""

    def __init__(self, proto: onnx.ModelProto, base_dir: pathlib.Path | None = None,
                 path: pathlib.Path | None = None, weights: Weights | None = None, fed: FedWeights | None = None,
                 files: DataFiles | None = None, deployed: bool = False,
                 output_shapes: dict[str, list | None] | None = None):
        self.proto = proto
        self.output_shapes = output_shapes  # symbolic shape inference's, where the caller has run it (else None)
        self.deployed = deployed  # a model graphfix writes: its fusions run as in every default session
        self.base_dir = base_dir
        self.files = files or (held(base_dir) if base_dir is not None else None)  # kept open while this runs
        self.path = path
        self.weights = weights or {}
        self.fed = fed if fed is not None else FedWeights()
        self.weight_feeds: dict[str, np.ndarray] = {}
        self.session: ort.InferenceSession | None = None
        self.load_error: str | None = None
        self.not_probed: str | None = None  # why the budget kept onnxruntime from loading it (`loadable`)
        self.linked: dict[str, ort.OrtValue] = {}  # external weights, mapped from held descriptors (kept alive here)
        self._last: tuple[tuple, RunResult] | None = None  # the latest run, by its inputs
        self.fused: frozenset[str] = frozenset()  # MatMul nodes run fused (graphfix.validate.fusion)
        self.timed_out = ""  # why runs stop at once, after one ran past the time budget
        try:
            runnable = proto
            if self.weights and has_stubs(proto):
                runnable, self.weight_feeds = self.fed.lift(proto, self.weights)
            if has_stubs(runnable):  # onnxruntime would look for a file named like the placeholder
                name = next(t.name for t in runnable.graph.initializer if is_stub(t))
                raise ValueError(f"weight '{name}' is kept apart from the model, but no weights were given")
            runnable, self.fused = transposes_fused(runnable, self.weight_feeds)
            self.linked = {name: ort.OrtValue.ortvalue_from_numpy(array)
                           for name, array in linked_weights(runnable, base_dir).items()}
            self.session = make_session(runnable, base_dir, linked=self.linked, optimized=deployed)
        except NotProbed as exc:  # not loaded, by the budget: no failure of the model (the probe skips it)
            self.load_error = self.not_probed = str(exc)
        except Exception as exc:  # an invalid model is a result here, not a crash
            self.load_error = as_written(first_line(str(exc)), self.fused)

    def exposing(self, names: list[str]) -> ModelRunner:
        """A runner of the same model that also outputs the named intermediate tensors."""
        if self.weights:
            return ModelRunner(with_outputs(self.proto, names), self.base_dir, weights=self.weights, fed=self.fed,
                               files=self.files, deployed=self.deployed)
        return ModelRunner(with_outputs(self.full_proto(), names), self.base_dir, files=self.files,
                           deployed=self.deployed)

    @classmethod
    def from_source(cls, source: ModelSource | tuple[onnx.ModelProto, pathlib.Path] | ModelRunner,
                    deployed: bool = False) -> ModelRunner:
        """From a proto, a path, or (proto, path of the same model): the caller's proto then saves loading it
        again. A runner is returned as it is. `deployed`: a model graphfix writes, run with the fusions a user's
        session runs (a declared shape they trust may fail there, helper 72)."""
        if isinstance(source, ModelRunner):
            return source
        if isinstance(source, tuple) and not has_stubs(source[0]):
            proto, path = source
            return cls(proto, pathlib.Path(path).parent.resolve(), pathlib.Path(path), deployed=deployed)
        if isinstance(source, tuple):  # a light proto: its file holds the weights
            source = pathlib.Path(source[1])
        proto, base_dir, files = load_structure(source)
        return cls(proto, base_dir, None if isinstance(source, onnx.ModelProto) else pathlib.Path(source), files=files,
                   deployed=deployed)

    def full_proto(self) -> onnx.ModelProto:
        """The proto with its weights: a light proto's stubs are filled from its weights, or read from its file."""
        if not has_stubs(self.proto):
            return self.proto
        if self.weights:
            return materialize(self.proto, self.weights)
        return onnx.load_model(str(self.path), load_external_data=False)

    @property
    def input_names(self) -> list[str]:
        if self.session is None:
            return []
        return [i.name for i in self.session.get_inputs() if i.name not in self.weight_feeds]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()] if self.session else []

    def run(self, feeds: dict[str, np.ndarray], *, strict_feeds: bool = False,
            budget_s: float | None = None) -> RunResult:
        """Outputs by name, or the error. Undeclared feeds are dropped unless `strict_feeds`. A run past the run
        budget ends this runner's runs (every other would run past it too); a speculative run (the probe's growth)
        passes its own, shorter `budget_s`, and running past that fails this run alone."""
        if self.session is None:
            return RunResult(None, f"session could not be created: {self.load_error}")
        if not strict_feeds:
            names = set(self.input_names)
            feeds = {k: v for k, v in feeds.items() if k in names}
        if self.timed_out:  # it ran past its budget once: every other run would as well
            return RunResult(None, self.timed_out)
        key = _feeds_key(feeds)
        if self._last is not None and self._last[0] == key:
            return self._last[1]  # the same inputs again (the anchoring run, then the export size): no second run
        own = budget_s is not None and budget_s < run_budget_seconds()
        options = ort.RunOptions()
        options.log_severity_level = 4  # a failing node is returned, not logged on stderr too
        timer = threading.Timer(budget_s if own else run_budget_seconds(), lambda: setattr(options, "terminate", True))
        timer.start()
        try:
            values = self.session.run(None, {**feeds, **self.weight_feeds}, options)
        except Exception as exc:
            if options.terminate and own:
                return RunResult(None, f"stopped after {budget_s:g} s (this run's own budget)")
            if options.terminate:
                self.timed_out = f"stopped after {run_budget_seconds():g} s (run budget, {ENV_RUN_BUDGET})"
                return RunResult(None, self.timed_out)
            text = error_text(exc)
            if OUT_OF_MEMORY.search(text):  # the worker's bound (GRAPHFIX_MAX_MEMORY): not run, not failing
                raise NotProbed(f"onnxruntime could not allocate what these sizes need within the memory graphfix "
                                f"allows ({ENV_MAX_MEMORY}): {first_line(text)}; the model was not run at these "
                                "sizes") from None
            deployed = DEPLOYED if self.deployed and NODE_IN_ERROR.search(text) else ""  # a node failed there
            result = RunResult(None, as_written(first_line(text), self.fused) + deployed)
        else:
            result = RunResult(dict(zip(self.output_names, values, strict=True)))
        finally:
            timer.cancel()
        self._last = (key, result)
        return result


class FedWeights:
    """Weights as numpy arrays, made once per tensor and shared by every runner given this object."""

    def __init__(self):
        self._arrays: dict[int, tuple[Weight, np.ndarray]] = {}

    def array(self, tensor: Weight) -> np.ndarray:
        hit = self._arrays.get(id(tensor))
        if hit is None or hit[0] is not tensor:
            hit = self._arrays[id(tensor)] = (tensor, weight_array(tensor))
        return hit[1]

    def lift(self, light: onnx.ModelProto, weights: Weights) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        """The model with its stubs as graph inputs, and the arrays to feed them; stubs of types numpy cannot
        hold, or read by ops outside the standard domain, get their tensor back instead."""
        runnable = copy_without_initializers(light)
        custom = {name for node in light.graph.node if node.domain not in ("", "ai.onnx") for name in node.input}
        feeds: dict[str, np.ndarray] = {}
        inputs = {i.name for i in light.graph.input}  # IR < 4 declares its initializers as inputs already
        for tensor in light.graph.initializer:
            if not is_stub(tensor):
                runnable.graph.initializer.append(tensor)
            elif tensor.data_type in FEEDABLE and tensor.name not in custom:
                feeds[tensor.name] = self.array(resolve(tensor, weights))
                if tensor.name not in inputs:
                    runnable.graph.input.append(
                        onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
            else:
                runnable.graph.initializer.append(weight_proto(resolve(tensor, weights)))
        return runnable, feeds


def _feeds_key(feeds: dict[str, np.ndarray]) -> tuple:
    """Inputs by value: names, shapes, dtypes and a digest of the bytes."""
    return tuple((name, value.shape, value.dtype.str, hashlib.blake2b(np.ascontiguousarray(value).tobytes(),
                                                                      digest_size=16).digest())
                 for name, value in sorted(feeds.items()))


def short_message(message: str) -> str:
    """ORT's status message without the 'Non-zero status code' preamble and the C++ source location."""
    text = message.split("Status Message: ", 1)[-1]
    return re.sub(r"^\S+\.(?:h|cc|cpp):\d+ .*? was false\. ", "", text)


def failing_node(error: str) -> tuple[str, str] | None:
    """(op_type, node name) from `... while running Where node. Name:'/Where' ...`, or None."""
    match = NODE_IN_ERROR.search(error)
    return (match.group(1), match.group(2)) if match else None


def with_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `proto` whose graph also outputs the named intermediate tensors (types left to ORT)."""
    extended = onnx.ModelProto()
    extended.CopyFrom(proto)
    present = {o.name for o in extended.graph.output}
    for name in names:
        if name not in present:
            extended.graph.output.append(onnx.ValueInfoProto(name=name))
    return extended


def upstream_only(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """A copy that computes only `outputs` (as its graph outputs) from the graph inputs."""
    producers = {out: n for n in model.graph.node for out in n.output}
    needed, stack, keep = set(), list(outputs), set()
    while stack:
        name = stack.pop()
        if name in needed or name not in producers:
            continue
        needed.add(name)
        keep.add(id(producers[name]))
        stack.extend(producers[name].input)
    sub = onnx.ModelProto()
    sub.CopyFrom(model)
    kept = [n for n in model.graph.node if id(n) in keep]
    del sub.graph.node[:]
    sub.graph.node.extend(kept)
    del sub.graph.output[:]
    sub.graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs)
    return sub


def without_downstream(model: onnx.ModelProto, node: onnx.NodeProto) -> onnx.ModelProto:
    """A copy without `node`, every node that depends on it, and the graph outputs they produced."""
    dead = set(node.output)
    kept = []
    for n in model.graph.node:
        if n.name == node.name or dead.intersection(n.input):
            dead.update(n.output)
        else:
            kept.append(n)
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    del cut.graph.node[:]
    cut.graph.node.extend(kept)
    outputs = [o for o in model.graph.output if o.name not in dead]
    del cut.graph.output[:]
    cut.graph.output.extend(outputs)
    return cut
