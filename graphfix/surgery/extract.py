"""`extract`: the subgraph between named tensors, as a model of its own, proved against the whole.

    result = extract(load_model("model.onnx"), ["/encoder/Add_output_0", "tokens"], ["logits"], Path("decoder.onnx"))

Any tensor can be a boundary: graph inputs, graph outputs, or intermediate tensors. The cut is done by
`onnx.utils.Extractor` on the structure-only model (weights in external data stay on disk and are copied in
chunks into `OUT.data`), with value_info inferred afresh on a weightless skeleton (the export's own value_info
is often stale). The part is refused (exit 2) when the outputs also depend on a graph input that is not a
boundary, or when a boundary input feeds none of the outputs. onnxruntime runs the whole model once at each of
several sizes, exposing the boundary tensors: a declared int dim (the whole's outputs, the part's inputs and
outputs) that the whole contradicts there becomes a dim name (`rnn [batch, 7, 24]` from a dynamo LSTM, 7 the
export length, is declared `[batch, time, 24]`). Before writing, the part, fed with the whole's boundary values,
must reproduce the whole's boundary outputs and return the shapes it declares.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import onnx
import onnx.utils

from graphfix.analysis.shapes import infer_shapes, skeleton, symbolic_inference
from graphfix.core.errors import InputError, UsageError
from graphfix.io.loading import LoadedModel
from graphfix.io.staging import scratch_dir
from graphfix.surgery import SurgeryResult, non_finite, output_problems, write_checked
from graphfix.surgery.observed import WholeRun, declared_names, relax, run_whole, undeclared, whole_runner
from graphfix.surgery.shared_dims import borrow, borrowed_sizes, described, untied
from graphfix.validate import ValidationOptions, synthesize_inputs
from graphfix.validate.inputs import check_shapes, graph_inputs
from graphfix.validate.runner import ModelRunner

log = logging.getLogger(__name__)


def extract(loaded: LoadedModel, inputs: list[str], outputs: list[str], output: Path | None,
            options: ValidationOptions | None = None, rename: dict[str, str] | None = None) -> SurgeryResult:
    """Cut the part of `loaded` that computes `outputs` from `inputs`, check it, and write it to `output`.

    `rename` gives boundary tensors new names in the part (`/encoder/norm/LayerNormalization_output_0` ->
    `encoder_out`), so that the encoder's output and the decoder's input can carry the same plain name."""
    options = options or ValidationOptions()
    rename = dict(rename or {})
    check_shapes(loaded.proto, options.shapes)
    producers = {out: node for node in loaded.proto.graph.node for out in node.output if out}
    borrowed = borrowed_sizes(loaded.proto, inputs, _upstream(producers, set(inputs), outputs)) or {}
    sources = sorted({how.source for how in borrowed.values()})  # read for their sizes alone: not the part's inputs
    check_boundaries(loaded.proto, [*inputs, *sources], outputs)
    runs = run_whole(loaded, inputs, outputs, options)  # once per probe size: the declarations, then the check
    notes: list[str] = []
    part = extract_proto(loaded.proto, [*inputs, *sources], outputs, runs, notes)
    borrow(part, borrowed)
    rename_boundaries(part, rename, set(inputs) | set(outputs))
    shown = [f"{name} as {rename[name]}" if name in rename else name for name in (*inputs, *outputs)]
    summary = (f"extracted {len(part.graph.node)} of {len(loaded.proto.graph.node)} nodes: "
               f"({', '.join(shown[:len(inputs)])}) -> ({', '.join(shown[len(inputs):])})"
               + (f"; {described(borrowed)}" if borrowed else ""))

    def check(staged: Path):
        checks, reasons = check_part(loaded, staged, inputs, outputs, options, rename, runs)
        if borrowed and not reasons and (reasons := check_tied(loaded, staged, borrowed, inputs, outputs, options,
                                                                rename, runs)):
            checks.append({"sizes": {}, "ok": False, "whole": "ran, the borrowed sizes untied", "problems": reasons})
        return checks, reasons

    with scratch_dir() as scratch:
        result = write_checked(part, output, loaded, summary, check, Path(scratch))
    result.notes[:0] = notes
    return result


def check_boundaries(model: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> None:
    """Refuse names that are not tensors of the graph, and cuts that leave the part open or an input unused."""
    if not inputs or not outputs:
        raise UsageError("give the boundary: --inputs NAME,... and --outputs NAME,...")
    for option, names in (("--inputs", inputs), ("--outputs", outputs)):
        if len(set(names)) != len(names):
            raise UsageError(f"{option} names a tensor twice")
    producers = {out: node for node in model.graph.node for out in node.output if out}
    weights = {t.name for t in model.graph.initializer}
    feeds = {i.name for i in graph_inputs(model)}
    known = set(producers) | feeds | weights
    for name in (*inputs, *outputs):
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            raise UsageError(f"'{name}' is no tensor of the model" + (f" (did you mean {', '.join(close)}?)"
                                                                      if close else ""))
    for name in inputs:
        if name in weights:
            raise UsageError(f"--inputs '{name}' is a weight (initializer), not a value the part can be fed")
    both = set(inputs) & set(outputs)
    if both:
        raise UsageError(f"'{sorted(both)[0]}' is both an input and an output of the part")
    reached = _upstream(producers, set(inputs), outputs)
    missing = sorted((reached & feeds) - set(inputs))
    if missing:
        raise UsageError(f"the outputs also depend on graph input(s) {', '.join(missing)}: add them to --inputs "
                         "(or cut later)")
    unused = [name for name in inputs if name not in reached]
    if unused:
        raise UsageError(f"--inputs {', '.join(unused)} feed(s) none of the outputs {', '.join(outputs)}")


def _upstream(producers: dict[str, onnx.NodeProto], stops: set[str], outputs: list[str]) -> set[str]:
    """Tensor names the outputs read, walking back to `stops` (which are included, never crossed)."""
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        if name in stops or name not in producers:
            continue
        node = producers[name]
        stack.extend(node.input)
        for graph in _subgraphs(node):  # outer-scope names read by If/Loop/Scan bodies
            stack.extend(_outer_names(graph))
    return seen


def _outer_names(graph: onnx.GraphProto) -> list[str]:
    """The names a subgraph reads from the scopes around it, its own subgraphs' included."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    local |= {o for n in graph.node for o in n.output}
    read = [i for n in graph.node for i in n.input]
    read += [name for n in graph.node for inner in _subgraphs(n) for name in _outer_names(inner)]
    return [name for name in read if name and name not in local]


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for attr in node.attribute for g in (*([attr.g] if attr.type == onnx.AttributeProto.GRAPH else []),
                                                    *attr.graphs)]


def _with_outer_reads(model: onnx.ModelProto, part: onnx.ModelProto, reached: set[str]) -> None:
    """Add to `part` the nodes and weights that only its subgraphs read (an If's branches reading `x` and a
    constant of the main graph, as the dynamo exporter writes `torch.cond`): onnx's Extractor follows node inputs
    alone, and its part failed the checker (helper 67). `reached`: the names the part's outputs read, its inputs
    left out."""
    kept = [node for node in model.graph.node if any(out in reached for out in node.output)]
    if len(kept) > len(part.graph.node):
        del part.graph.node[:]
        part.graph.node.extend(kept)
    present = {t.name for t in part.graph.initializer}
    part.graph.initializer.extend(t for t in model.graph.initializer if t.name in reached and t.name not in present)


def extract_proto(model: onnx.ModelProto, inputs: list[str], outputs: list[str], runs: list[WholeRun] | None = None,
                  notes: list[str] | None = None) -> onnx.ModelProto:
    """The part as a ModelProto; external weights keep their references (never read here). With the whole's
    `runs`, declared ints they contradict (the whole's outputs, then the part's boundaries) become dim names,
    before shape inference, so that a stale one is not carried downstream; `notes` gets one line per change."""
    notes, runs = (notes if notes is not None else []), runs or []
    taken = declared_names(model)
    original_outputs = list(model.graph.output)
    declared = [_copy(vi) for vi in original_outputs]
    producers = {out: node for node in model.graph.node for out in node.output if out}
    reached = _upstream(producers, set(inputs), outputs)  # the whole's outputs the part reads or computes
    notes.extend(note for vi in declared if (note := relax(vi, runs, taken)) and vi.name in reached)
    original = list(model.graph.value_info)
    del model.graph.output[:]
    model.graph.output.extend(declared)
    try:
        value_info = _typed_value_info(model, set(inputs) | set(outputs))
        del model.graph.value_info[:]
        model.graph.value_info.extend(value_info)
        part = onnx.utils.Extractor(model).extract_model(list(inputs), list(outputs))
    finally:
        del model.graph.value_info[:]
        model.graph.value_info.extend(original)
        del model.graph.output[:]
        model.graph.output.extend(original_outputs)
    notes.extend(note for vi in (*part.graph.input, *part.graph.output) if (note := relax(vi, runs, taken)))
    _with_outer_reads(model, part, reached - set(inputs))
    part.graph.name = model.graph.name or part.graph.name
    for name in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(part, name, getattr(model, name))
    part.metadata_props.extend(model.metadata_props)
    return part


def _copy(vi: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    copied = onnx.ValueInfoProto()
    copied.CopyFrom(vi)
    return copied


def rename_boundaries(part: onnx.ModelProto, rename: dict[str, str], boundaries: set[str]) -> None:
    """Rename boundary tensors everywhere in `part` (nodes, graph inputs and outputs, value_info)."""
    if not rename:
        return
    taken = _names(part.graph)
    for old, new in rename.items():
        if old not in boundaries:
            raise UsageError(f"--name {old}={new}: '{old}' is not one of the --inputs or --outputs")
        if new in taken and new != old:
            raise UsageError(f"--name {old}={new}: the part already has a tensor named '{new}'")
    graph = part.graph
    _rename_reads(graph, rename)
    for node in graph.node:
        node.output[:] = [rename.get(n, n) for n in node.output]
    for vi in (*graph.input, *graph.output, *graph.value_info):
        vi.name = rename.get(vi.name, vi.name)


def _names(graph: onnx.GraphProto) -> set[str]:
    """Every name the graph and its subgraphs define or read: a new name must be none of them (a branch's own
    tensor of that name would shadow the boundary it reads)."""
    names = {vi.name for vi in (*graph.input, *graph.output)} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input, node.output)
        for sub in _subgraphs(node):
            names |= _names(sub)
    return names - {""}


def _rename_reads(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Rename what the graph's nodes read, in its subgraphs too, where the subgraph does not define the name
    itself (helper 69: `--name a=feat` left an If's branch reading `a`, and the part failed the checker)."""
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        for sub in _subgraphs(node):
            local = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            local |= {o for n in sub.node for o in n.output}
            _rename_reads(sub, {old: new for old, new in rename.items() if old not in local})


def _typed_value_info(model: onnx.ModelProto, needed: set[str]) -> list[onnx.ValueInfoProto]:
    """Fresh value_info for every tensor shape inference reaches; boundaries it misses come from onnxruntime's
    symbolic shape inference. A boundary whose type nobody can tell is an input error."""
    inferred = infer_shapes(model)
    infos = {vi.name: vi for vi in inferred.graph.value_info if vi.type.tensor_type.elem_type}
    declared = {vi.name for vi in (*model.graph.input, *model.graph.output)}
    missing = needed - set(infos) - declared
    vague = {name for name in needed - missing - declared if _vague(infos[name])}
    if missing or vague:  # onnxruntime's symbolic inference names more dims (a padded Conv keeps `frames`)
        for name, vi in _symbolic_value_info(model).items():
            if name in missing or (name in vague and not _vague(vi)):
                infos[name] = vi
    unknown = sorted(missing - set(infos))
    if unknown:
        raise InputError(f"cannot tell the type of tensor(s) {', '.join(unknown)}: shape inference stops before "
                         "them; cut at a tensor nearer the inputs")
    return list(infos.values())


def _vague(vi: onnx.ValueInfoProto) -> bool:
    """True when a dim is unknown or has a name shape inference made up (`unk__0`)."""
    if not vi.type.tensor_type.HasField("shape"):
        return True
    return any(not d.HasField("dim_value") and (not d.dim_param or d.dim_param.startswith("unk__"))
               for d in vi.type.tensor_type.shape.dim)


def _symbolic_value_info(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    inferred = symbolic_inference(skeleton(model), merge=True)
    inputs = {i.name for i in model.graph.input}
    return {name: vi for name, vi in inferred.value_info.items()
            if name not in inputs and vi.type.tensor_type.elem_type}


def check_tied(loaded: LoadedModel, staged: Path, borrowed: dict, inputs: list[str], outputs: list[str],
               options: ValidationOptions, rename: dict[str, str], runs: list[WholeRun]) -> list[str]:
    """The borrowed sizes checked at the first size the whole ran at, with them untied (shared_dims.untied)."""
    ran = next((run for run in runs if run.values is not None), None)
    if ran is None:
        return []
    whole, part = whole_runner(loaded, inputs, outputs), ModelRunner.from_source(staged, deployed=True)
    feeds = synthesize_inputs(loaded.proto, ran.sizes, options)
    return [f"at sizes {ran.sizes}: {reason}"
            for reason in untied(whole, part, feeds, borrowed, inputs, outputs, rename, options)]


def check_part(loaded: LoadedModel, staged: Path, inputs: list[str], outputs: list[str],
               options: ValidationOptions, rename: dict[str, str] | None = None,
               runs: list[WholeRun] | None = None) -> tuple[list[dict], list[str]]:
    """Run the staged part at each probe size the whole ran at (`runs`, else the whole is run here): it must
    reproduce the whole's boundary outputs and return the dims it declares."""
    try:
        onnx.checker.check_model(str(staged))
    except Exception as exc:  # the checker's message is the reason
        return [], [f"the part fails the ONNX checker: {str(exc).strip().splitlines()[0]}"]
    part = ModelRunner.from_source(staged, deployed=True)
    if part.session is None:
        return [], [f"onnxruntime cannot load the part: {part.load_error}"]
    runs = runs if runs is not None else run_whole(loaded, inputs, outputs, options)
    new = rename or {}
    checks, reasons = [], []
    for run in runs:
        binding = run.sizes
        if run.values is not None:
            fed = {new.get(name, name): run.values[name] for name in inputs}
            got = part.run(fed, strict_feeds=True)
            problems = [got.error] if not got.ok else output_problems(
                {new.get(name, name): run.values[name] for name in outputs}, got.outputs, options.rtol, options.atol)
        else:  # the whole fails here (a bug outside the part, maybe): the part must at least run on its own
            fed = synthesize_inputs(part.proto, binding, options)
            got = part.run(fed, strict_feeds=True)
            problems = [got.error] if not got.ok else non_finite(got.outputs)
        if got.ok:
            problems += undeclared(part.proto, fed, got.outputs, binding)
        checks.append({"sizes": binding, "ok": not problems,
                       "whole": "ran" if run.values is not None else f"failed: {run.error}", "problems": problems})
        reasons += [f"at sizes {binding}: {p}" for p in problems]
    return checks, reasons
