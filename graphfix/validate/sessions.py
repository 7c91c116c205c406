"""Making an onnxruntime session from a parsed model, onnxruntime opening no file: the external weights loading
checked are handed over from the descriptors it holds (graphfix.io.held), the main graph's memory-mapped in place,
any other external tensor inline. A session that may take long to load (onnxruntime's optimizations fold
constants while loading) is waited for within the run budget."""

from __future__ import annotations

import functools
import os
import pathlib
import re

import numpy as np
import onnx
import onnxruntime as ort

from graphfix.core.counts import spelled
from graphfix.core.errors import InputError
from graphfix.io.budgets import ENV_PROBE_MEMORY, probe_memory_budget
from graphfix.io.external_data import data_file, external_ref, model_tensors, read_external
from graphfix.io.weights import is_stub
from graphfix.validate.budget import NotProbed, loadable, made_within_budget

INLINE_COPIES = 6  # of an external value given inline: read, copied into the proto, serialized, parsed, held
PROTOBUF_LIMIT = 2 << 30
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
# element types numpy holds as onnxruntime reads them: a weight of one of them can be fed or used in place
FEEDABLE = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                      onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32,
                      onnx.TensorProto.INT64, onnx.TensorProto.BOOL})


def linked_weights(proto: onnx.ModelProto, base_dir: pathlib.Path | None) -> dict[str, np.ndarray]:
    """The main graph's initializers kept in external data, as arrays memory-mapped from the descriptors loading
    holds (graphfix.io.held): onnxruntime uses them in place and opens no file. Types onnxruntime cannot take
    from numpy, and arrays whose offset leaves them unaligned, are left to `in_memory_files`."""
    if base_dir is None:
        return {}
    linked = {}
    for tensor in proto.graph.initializer:
        if external_ref(tensor) is not None and tensor.data_type in FEEDABLE:
            array = read_external(tensor, base_dir)
            if array.flags.aligned:
                linked[tensor.name] = array
    return linked


def _linked_out(proto: onnx.ModelProto, base_dir: pathlib.Path | None) -> set[str]:
    """Initializers whose data file is a link out of the model's folder that graphfix accepted (a Hugging Face hub
    cache snapshot links into its repository's blobs/)."""
    if base_dir is None:
        return set()
    root = os.path.realpath(base_dir)
    return {tensor.name for tensor in proto.graph.initializer if (ref := external_ref(tensor)) is not None
            and os.path.commonpath([root, os.path.realpath(ref.path(base_dir))]) != root}


def _unhanded(proto: onnx.ModelProto, handed: set[str]):
    """(tensor, reference) of each external tensor but the `handed` initializers of the main graph (which
    `model_tensors` yields first)."""
    top = len(proto.graph.initializer)
    for index, (where, tensor) in enumerate(model_tensors(proto)):
        ref = external_ref(tensor, where)
        if ref is not None and not is_stub(tensor) and not (index < top and tensor.name in handed):
            yield tensor, ref


def make_session(proto: onnx.ModelProto, base_dir: pathlib.Path | None,
                 linked: dict[str, ort.OrtValue] | None = None, optimized: bool = False) -> ort.InferenceSession:
    """A session made from the proto, with optimizations off (a probe compares what the graph says) or, with
    `optimized`, at the basic level, whose fusions trust declared shapes as a default session's do (the extended
    level's turn a quantized model's QDQ pairs into integer kernels, off by a quantization step by design, helper
    75): onnxruntime opens no file (`hand_over`); none where loading could take without bound (`loadable`), and an
    optimized one is waited for within the run budget (`made_within_budget`)."""
    loadable(proto)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if optimized else \
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # failures are returned, not printed
    options.add_session_config_entry("session.disable_prepacking", "1")  # a few runs: packed copies cost more
    options.enable_cpu_mem_arena = False  # else each session keeps its largest run's buffers (622 MB on Llama)
    source, _copied = hand_over(options, proto, base_dir, linked)
    load = functools.partial(ort.InferenceSession, source, options, providers=["CPUExecutionProvider"])
    return made_within_budget(load, "onnxruntime's optimized session") if optimized else load()  # folding: bounded


def hand_over(options: ort.SessionOptions, proto: onnx.ModelProto, base_dir: pathlib.Path | None,
              linked: dict[str, ort.OrtValue] | None = None) -> tuple[bytes, list]:
    """The model's bytes for `ort.InferenceSession`, its external weights handed over in `options` from the
    descriptors loading holds (graphfix.io.held): onnxruntime reads no file. `linked` values (over memory-mapped
    arrays, see `linked_weights`) are used in place, and the caller keeps them alive as long as the session;
    without them, the weights are copied by onnxruntime from values that the caller keeps until the session is
    made (the second item). Any other external tensor goes inline (`with_values_inline`). onnxruntime still checks
    that each handed-over location exists in the model's folder, and reads none of them."""
    copied = []
    if linked is None:
        copied = [(name, ort.OrtValue.ortvalue_from_numpy(a)) for name, a in linked_weights(proto, base_dir).items()]
        if copied:
            options.add_external_initializers([name for name, _ in copied], [value for _, value in copied])
        linked = {}
    escaping = _linked_out(proto, base_dir) if linked else set()
    for name, value in linked.items():
        if name not in escaping:
            options.add_initializer(name, value)
    if escaping:  # onnxruntime refuses a location that links out of the folder (a hub cache's blobs/): copied
        options.add_external_initializers(list(escaping), [linked[name] for name in escaping])
    handed = set(linked) | {name for name, _ in copied}
    if base_dir is not None:  # where onnxruntime checks that the locations exist (it reads none of them)
        options.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(base_dir))
    return with_values_inline(proto, base_dir, handed).SerializeToString(), copied


def with_values_inline(proto: onnx.ModelProto, base_dir: pathlib.Path | None, handed: set[str]) -> onnx.ModelProto:
    """The model, or a copy whose external tensors other than the `handed` initializers carry their bytes, read
    from the held descriptors (onnxruntime would open their files itself: a Constant's value, a subgraph's or a
    function's tensor, a type numpy cannot hold)."""
    if not any(_unhanded(proto, handed)):
        return proto
    if base_dir is None:  # onnxruntime would resolve the locations against the working directory
        raise ValueError("the model keeps values in external data, but no folder was given to read them from")
    inline_bytes(sum(ref.length for _, ref in _unhanded(proto, handed)))
    inline = onnx.ModelProto()
    inline.CopyFrom(proto)
    for tensor, ref in _unhanded(inline, handed):
        tensor.raw_data = data_file(base_dir, ref.location, ref.where).read(ref.offset, ref.length)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    return inline


def inline_bytes(total: int) -> None:
    """NotProbed where the external values given to onnxruntime inline (`with_values_inline`) would not fit: they
    are read, copied into the serialized model and parsed again by onnxruntime (about six times their size, helper
    118: a Constant's 1 GiB of sparse external data took 6.2 GB before the probe's budget was asked), and protobuf
    serializes no model over 2 GiB."""
    budget = probe_memory_budget()
    if total * INLINE_COPIES > budget or total >= PROTOBUF_LIMIT:
        raise NotProbed(f"the model keeps {spelled(total)} bytes of values in external data that onnxruntime must be "
                        "given inline (a Constant's, a subgraph's or a function's), over the probe's memory budget "
                        f"of {budget:,} ({ENV_PROBE_MEMORY}) or protobuf's 2 GiB; the model was not run")


def user_session(loaded, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    """A session of `loaded` (a LoadedModel) with the user's `options`, onnxruntime's default optimizations among
    them (`bench`, `stream`): its weights handed over from the descriptors loading checked (onnxruntime reads no
    file again), loaded within the run budget (the optimizations fold constants as they load); a model onnxruntime
    cannot load is an InputError naming it."""
    loadable(loaded.proto)  # as a probe's session: onnx's data propagation unbounded as it loads (helper 118)
    source, _copied = hand_over(options, loaded.proto, loaded.base_dir.resolve() if loaded.base_dir else None)
    try:
        return made_within_budget(functools.partial(ort.InferenceSession, source, options, providers=providers),
                                  f"{loaded.name}: onnxruntime's session")
    except NotProbed:
        raise
    except Exception as exc:
        raise InputError(f"{loaded.name}: onnxruntime cannot load the model: {first_line(error_text(exc))}") from exc


def error_text(exc: BaseException) -> str:
    """ORT's message without the `[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :` prefix."""
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(exc))


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
