"""The validator, tested by mutation: deliberately wrong rewrites of each rule's fix must be rejected.

For each model a rule repairs (the samples, small graphs with sizes baked at export, and PyTorch's own attention
layers exported by the TorchScript exporter), the correct repair must pass; then every operator below is applied to
every node the fix added or changed (Where branches swapped or its condition negated, an Unsqueeze on another axis,
another `Shape(x)[i]` gathered or read, a slice off by one, a reshape with its dims transposed, a Concat or a Tile
along the wrong axis), and validation must reject each mutant. A mutant
that computes what the correct repair computes (an Unsqueeze axis next to a dim of 1) is equivalent, not wrong: it
is set aside, checked by running both with plain onnxruntime. The kill rate is printed; it must be at least 95 %.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import graphfix
from graphfix.validate import ValidationOptions, validate

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
CASES = ["hubert_padding_mask", "faster_rcnn_box_head", "wenet_mqa"]  # GF003, GF004, GF002
MIN_KILL_RATE = 0.95


def _graph(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def baked_models() -> dict[str, tuple[onnx.ModelProto, dict]]:
    """name -> (model with a size baked at export, --trace-shape): GF004's Reshape and Expand fixes."""
    f = onnx.TensorProto.FLOAT
    merged = _graph([helper.make_node("Reshape", ["x", "s"], ["y"], name="/Reshape")],
                    [helper.make_tensor_value_info("x", f, ["B", "T", 8])],
                    [helper.make_tensor_value_info("y", f, ["BT", 8])], {"s": np.array([10, 8], np.int64)})
    expanded = _graph([helper.make_node("Expand", ["x", "s"], ["y"], name="/Expand")],
                      [helper.make_tensor_value_info("x", f, ["B", 1, 8])],
                      [helper.make_tensor_value_info("y", f, ["B", 3, 8])], {"s": np.array([2, 3, 8], np.int64)})
    return {"reshape merging B*T": (merged, {"x": (2, 5, 8)}), "expand": (expanded, {"x": (2, 1, 8)})}


def repaired_cases() -> Iterator[tuple[str, onnx.ModelProto, onnx.ModelProto, ValidationOptions]]:
    """(name, original, correct repair, the options that prove it) for every case."""
    for case in CASES:
        original = onnx.load(SAMPLES / case / "model.onnx")
        repair = graphfix.repair(original, simplify=False)
        assert repair.status == "repaired" and repair.validation["passed"], (case, repair.validation["reasons"])
        yield case, original, repair.model, ValidationOptions(trace_sizes=repair.validation["sizes"][0])
    for name, (original, traced) in baked_models().items():
        repair = graphfix.repair(original, simplify=False, trace_shapes=traced)
        assert repair.status != "unchanged", name
        # a dim without any reference reaches `runs`: the mutants must then be caught by shapes and export size
        options = ValidationOptions(trace_sizes=repair.validation["sizes"][0], require=repair.validation["evidence"])
        assert validate(original, repair.model, options).passed, name
        yield name, original, repair.model, options


def equivalent(correct: onnx.ModelProto, mutant: onnx.ModelProto, options: ValidationOptions) -> bool:
    """True when plain onnxruntime gives the same outputs for both at every probe size."""
    import onnxruntime as ort

    from graphfix.validate import probe_sizes, synthesize_inputs

    quiet = ort.SessionOptions()
    quiet.log_severity_level = 3
    try:
        sessions = [ort.InferenceSession(m.SerializeToString(), quiet, providers=["CPUExecutionProvider"])
                    for m in (correct, mutant)]
    except Exception:
        return False
    for binding in probe_sizes(correct, options):
        feeds = synthesize_inputs(correct, binding, options)
        try:
            ours, theirs = (s.run(None, feeds) for s in sessions)
        except Exception:
            return False
        if any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True)):
            return False
    return True

Mutant = tuple[str, onnx.ModelProto]


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def with_constant(model: onnx.ModelProto, index: int, slot: int, value: np.ndarray) -> onnx.ModelProto:
    """A copy whose node `index` reads `value` (a new initializer) at input `slot`."""
    mutant = onnx.ModelProto()
    mutant.CopyFrom(model)
    name = f"mutant_{index}_{slot}"
    mutant.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    mutant.graph.node[index].input[slot] = name
    return mutant


def edited(model: onnx.ModelProto, index: int, edit: Callable[[onnx.NodeProto, onnx.ModelProto], None]):
    mutant = onnx.ModelProto()
    mutant.CopyFrom(model)
    edit(mutant.graph.node[index], mutant)
    return mutant


def _swap(node, _):
    node.input[1], node.input[2] = node.input[2], node.input[1]


def _negate(node, model):
    model.graph.node.append(helper.make_node("Not", [node.input[0]], ["mutant_not"], name="mutant_not"))
    node.input[0] = "mutant_not"
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend([nodes[-1], *nodes[:-1]] if nodes[-1].input[0] in _graph_inputs(model)
                            else _topological(nodes))


def _graph_inputs(model):
    return {i.name for i in model.graph.input}


def _topological(nodes):
    """Nodes reordered so each comes after its producers (the Not goes right after its input's producer)."""
    done, ordered, pending = set(), [], list(nodes)
    produced = {out for n in nodes for out in n.output}
    while pending:
        for n in list(pending):
            if all(i not in produced or i in done for i in n.input):
                ordered.append(n)
                done.update(n.output)
                pending.remove(n)
    return ordered


def _shape_window(shift: int):
    def edit(node, _):
        for attribute in node.attribute:
            if attribute.name in ("start", "end"):
                attribute.i += shift
    return edit


def _reverse_inputs(node, _):
    reversed_inputs = list(node.input)[::-1]
    del node.input[:]
    node.input.extend(reversed_inputs)


def mutants(original: onnx.ModelProto, repaired: onnx.ModelProto) -> Iterator[Mutant]:
    """Every wrong rewrite of the nodes the fix added or changed."""
    before = {(n.name, tuple(n.input), tuple(n.output)) for n in original.graph.node}
    values = constants(repaired)
    for index, node in enumerate(repaired.graph.node):
        if (node.name, tuple(node.input), tuple(node.output)) in before or node.op_type == "Constant":
            continue
        label = f"{node.op_type} '{node.name}'"
        if node.op_type == "Where":
            yield f"{label}: branches swapped", edited(repaired, index, _swap)
            yield f"{label}: condition negated", edited(repaired, index, _negate)
        if node.op_type == "Unsqueeze" and len(node.input) > 1 and node.input[1] in values:
            axes = values[node.input[1]]
            for other in (axes - 1, np.zeros_like(axes)):
                if not np.array_equal(other, axes):
                    yield f"{label}: axes {axes.tolist()} -> {other.tolist()}", with_constant(repaired, index, 1, other)
        if node.op_type == "Gather" and node.input[1] in values and values[node.input[1]].size == 1:
            picked = values[node.input[1]]
            for other in (picked + 1, picked - 1):
                yield f"{label}: index {picked.tolist()} -> {other.tolist()}", with_constant(repaired, index, 1, other)
        if node.op_type == "Shape" and any(a.name == "start" for a in node.attribute):
            for shift in (1, -1):
                yield f"{label}: dims read {shift:+d} axis", edited(repaired, index, _shape_window(shift))
        if node.op_type == "Slice":
            for slot, delta, what in ((2, -1, "ends"), (1, 1, "starts")):
                if len(node.input) > slot and node.input[slot] in values:
                    bound = values[node.input[slot]]
                    yield f"{label}: {what} off by one", with_constant(repaired, index, slot, bound + delta)
        if node.op_type in ("Reshape", "Expand") and node.input[1] in values and values[node.input[1]].size > 1:
            shape = values[node.input[1]].copy()
            shape[[0, 1]] = shape[[1, 0]]
            yield f"{label}: dims transposed", with_constant(repaired, index, 1, shape)
        if node.op_type == "Concat" and len(set(node.input)) > 1:
            yield f"{label}: inputs reversed", edited(repaired, index, _reverse_inputs)
        if node.op_type == "Tile" and node.input[1] in values and len(set(values[node.input[1]].tolist())) > 1:
            yield f"{label}: repeats along other axes", with_constant(repaired, index, 1, values[node.input[1]][::-1])


def attention_cases() -> Iterator[tuple[str, onnx.ModelProto, onnx.ModelProto, ValidationOptions]]:
    """nn.MultiheadAttention and nn.TransformerDecoderLayer, sequence first, TorchScript exporter: the original
    runs at its export length only, so the proof rests on the original re-traced at each size."""
    import tempfile

    from fixtures.torch_models import attention

    with tempfile.TemporaryDirectory() as folder:
        for kind in ("mha", "decoder"):
            case = attention(kind, batch_first=False)
            path = Path(folder) / f"{case.name}.onnx"
            case.export(path)
            original = onnx.load(path)
            repair = graphfix.repair(original, simplify=False)
            assert repair.status == "repaired" and repair.validation["passed"], repair.validation["reasons"]
            yield case.name, original, repair.model, ValidationOptions(trace_sizes=repair.validation["sizes"][0])


def kill_rate(cases, capsys) -> None:
    """Every mutant of every case's repair, validated: prints the kill rate and asserts it."""
    killed, total, survivors, same = 0, 0, [], []
    for case, original, correct, options in cases:
        family = list(mutants(original, correct))
        assert family, f"no mutant of the {case} repair"
        for label, mutant in family:
            if equivalent(correct, mutant, options):
                same.append(f"{case}: {label}")
                continue
            total += 1
            if validate(original, mutant, options).passed:
                survivors.append(f"{case}: {label}")
            else:
                killed += 1
    rate = killed / total
    with capsys.disabled():
        print(f"\nvalidator mutation kill rate: {killed}/{total} = {rate:.1%} ({len(same)} equivalent set aside)"
              + "".join(f"\n  survived: {s}" for s in survivors))
    assert total >= 10 and rate >= MIN_KILL_RATE, survivors


def test_mutants_of_every_fix_are_rejected(capsys):
    kill_rate(repaired_cases(), capsys)


@pytest.mark.torch
@pytest.mark.slow
def test_mutants_of_the_attention_repairs_are_rejected(capsys):
    pytest.importorskip("torch")
    kill_rate(attention_cases(), capsys)
