"""GF002 repeat-interleave: every exported form of torch.repeat_interleave is found, rewritten and equal to torch.

Forms seen with torch 2.13 (printed from exports, see the rule's docs): TorchScript exporter at opsets 13-20 →
Tile (integer repeats), Tile+OneHot (repeats from sizes), unrolled Split/Expand/Reshape/Concat (a repeats tensor;
fails in onnxruntime), Loop{SequenceInsert}+ConcatFromSequence (a repeats tensor on a dynamic axis; fails).
dynamo exporter (opset >= 18 in practice) → Unsqueeze/Expand/Reshape and CumSum…Gather: healthy, never reported.
Older exporters' Sequence forms cannot come out of torch 2.13 and are built here by hand with onnx.helper.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import onnxsim
import pytest
import torch
from conftest import sample_module
from onnx import TensorProto, helper

import graphfix
from graphfix.core.rule import Safety


class IntRepeat(torch.nn.Module):
    def __init__(self, repeats, dim):
        super().__init__()
        self.repeats, self.dim = repeats, dim

    def forward(self, x):
        return torch.repeat_interleave(x, self.repeats, dim=self.dim)


class SizeRepeat(torch.nn.Module):  # repeats computed from sizes, as in MQA/GQA
    def __init__(self, dim=1):
        super().__init__()
        self.dim = dim

    def forward(self, q, k):
        return torch.repeat_interleave(k, q.size(1) // k.size(1), dim=self.dim)


class TensorRepeat(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return torch.repeat_interleave(x, torch.tensor([1, 2, 3]), dim=self.dim)


class InputRepeat(torch.nn.Module):  # ForwardTacotron-style length regulator: repeats is an input
    def forward(self, x, r):
        return torch.repeat_interleave(x, r, dim=1)


class Healthy(torch.nn.Module):  # wenet PR #2519 and other repeat-like code that is not repeat_interleave
    def forward(self, k):
        b, h_kv, t, d = k.shape
        fixed = k.unsqueeze(2).expand(-1, -1, 2, -1, -1).reshape(b, h_kv * 2, t, d)
        return fixed + k.repeat(1, 2, 1, 1) + k.unsqueeze(1).repeat(1, 2, 1, 1, 1).flatten(1, 2)


def _sizes(make):
    return [make(b, t) for b, t in ((1, 1), (2, 5), (3, 8))]  # three sizes of every dynamic dim


# name: module, input names, dynamic axes, export inputs, inputs at three sizes, form, ops after the fix
CASES = {
    "int_dim1": (IntRepeat(2, 1), ["x"], {"x": [0, 1]}, (torch.randn(2, 3, 4),),
                 _sizes(lambda b, t: (torch.randn(b, t, 4),)), "tile", ["Unsqueeze", "Expand", "Reshape"]),
    "int_dim-3": (IntRepeat(2, -3), ["x"], {"x": [0, 2]}, (torch.randn(2, 3, 5, 4),),
                  _sizes(lambda b, t: (torch.randn(b, 3, t, 4),)), "tile", ["Unsqueeze", "Expand", "Reshape"]),
    "int_dim-1": (IntRepeat(3, -1), ["x"], {"x": [0, 1]}, (torch.randn(2, 3, 4),),
                  _sizes(lambda b, t: (torch.randn(b, t, 4),)), "tile", ["Unsqueeze", "Expand", "Reshape"]),
    "int_2d_flatten": (IntRepeat(2, 0), ["x"], {"x": [0, 1]}, (torch.randn(3, 4),),
                       _sizes(lambda b, t: (torch.randn(b, t),)), "tile",  # two dynamic dims: one Shape read
                       ["Unsqueeze", "Shape", "Expand", "Concat", "Reshape"]),
    "size_heads": (SizeRepeat(), ["q", "k"], {"q": [0, 2], "k": [0, 2]},
                   (torch.randn(2, 4, 5), torch.randn(2, 2, 5)),
                   _sizes(lambda b, t: (torch.randn(b, 4, t), torch.randn(b, 2, t))), "tile-onehot",
                   ["Unsqueeze", "Expand", "Reshape"]),
    "size_dynamic_heads": (SizeRepeat(-2), ["q", "k"], {"q": [0, 1, 2], "k": [0, 1, 2]},
                           (torch.randn(2, 4, 5), torch.randn(2, 2, 5)),
                           _sizes(lambda b, t: (torch.randn(b, 2 * t, 3), torch.randn(b, t, 3))), "tile-onehot", None),
    "tensor_dim1": (TensorRepeat(1), ["x"], {"x": [0, 2]}, (torch.randn(2, 3, 4),),
                    _sizes(lambda b, t: (torch.randn(b, 3, t),)), "unrolled", ["Gather"]),
    "tensor_dim-1": (TensorRepeat(-1), ["x"], {"x": [0, 1]}, (torch.randn(2, 4, 3),),
                     _sizes(lambda b, t: (torch.randn(b, t, 3),)), "unrolled", ["Gather"]),
    "tensor_input": (InputRepeat(), ["x", "r"], {"x": [0, 2]}, (torch.randn(2, 3, 4), torch.tensor([1, 2, 3])),
                     _sizes(lambda b, t: (torch.randn(b, 3, t), torch.tensor([t % 3, 2, 1]))), "unrolled",
                     ["Cast", "CumSum", "Gather", "Unsqueeze", "Range", "Unsqueeze", "LessOrEqual", "Cast",
                      "ReduceSum", "Gather"]),
    "tensor_dynamic_axis": (TensorRepeat(1), ["x"], {"x": [0, 1, 2]}, (torch.randn(2, 3, 4),),
                            _sizes(lambda b, t: (torch.randn(b, 3, t),)), "loop", ["Gather"]),
}
BROKEN = {"tensor_dim1", "tensor_input", "tensor_dynamic_axis"}  # onnxruntime fails even at the export size
OPSET_SWEEP = ("int_dim-3", "size_heads", "tensor_dim1", "tensor_dynamic_axis")
TS_RUNS = [(name, 17) for name in CASES] + [(name, opset) for name in OPSET_SWEEP for opset in (13, 15, 20)]


def export(module, args, names, dynamic, dynamo, opset):
    buffer = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            shapes = {n: {a: torch.export.Dim.AUTO for a in axes} for n, axes in dynamic.items()}
            torch.onnx.export(module, args, buffer, input_names=names, dynamic_shapes=shapes, dynamo=True,
                              opset_version=opset)
        else:
            axes = {n: {a: f"{n}_{a}" for a in dims} for n, dims in dynamic.items()}
            torch.onnx.export(module, args, buffer, input_names=names, dynamic_axes=axes, dynamo=False,
                              opset_version=opset)
    return onnx.load_from_string(buffer.getvalue())


def run(model, names, inputs):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {n: np.asarray(v) for n, v in zip(names, inputs, strict=True)})[0]


def repair(model):
    return graphfix.repair(model, validate=False, simplify=False, only=("GF002",))


@pytest.fixture(scope="module")
def torchscript():
    cache = {}

    def get(name, opset):
        if (name, opset) not in cache:
            module, names, dynamic, args = CASES[name][:4]
            model = export(module, args, names, dynamic, False, opset)
            cache[name, opset] = model, repair(model)
        return cache[name, opset]

    return get


@pytest.mark.parametrize(("name", "opset"), TS_RUNS)
def test_torchscript_forms_fire_and_fix(torchscript, name, opset):
    module, names, _, args, sizes, form, ops = CASES[name]
    model, result = torchscript(name, opset)
    [finding] = result.before.findings
    assert f"in the {form} form" in finding.message
    assert finding.nodes and finding.hint and finding.shapes and finding.fix.safety is Safety.SAFE
    assert [a.rule for a in result.applied] == ["GF002"] and not result.after.findings
    if ops is not None:
        assert [n.op_type for n in result.model.graph.node if n.op_type != "Constant"] == ops
    onnx.checker.check_model(result.model, full_check=True)
    for inputs in sizes:
        want = module(*inputs).numpy()
        got = run(result.model, names, inputs)
        assert got.shape == want.shape and np.array_equal(got, want)
    if name in BROKEN:
        with pytest.raises(Exception, match=r"Non concat axis dimensions must match|Can't merge shape info"):
            run(model, names, [a.numpy() for a in args])


@pytest.mark.parametrize("name", ["int_dim1", "size_heads", "tensor_dim1", "tensor_dynamic_axis"])
def test_dynamo_exports_are_healthy(name):
    module, names, dynamic, args = CASES[name][:4]
    model = export(module, args, names, dynamic, True, 18)
    result = repair(model)
    assert not result.before.findings and not result.before.rejections and not result.applied


@pytest.mark.parametrize("opset", [13, 17])
def test_repeat_like_code_that_is_not_repeat_interleave(opset):
    model = export(Healthy(), (torch.randn(2, 2, 5, 8),), ["k"], {"k": [0, 2]}, False, opset)
    result = repair(model)
    assert not result.before.findings and not result.applied


# ---------------------------------------------------------------------- older exporters' forms, built by hand

def _const(name, values, dtype=np.int64):
    return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(np.asarray(values, dtype),
                                                                                       name))


def _model(nodes, inputs, output, opset=13):
    declared = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["B", "T_out", 4])
    graph = helper.make_graph(nodes, "g", inputs, [declared])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def loop_form(repeats="int", trip="size"):
    """torch <= 1.12, opset 11-13: Loop{SequenceAt, Unsqueeze, Expand, Reshape, SequenceInsert} on x[B, T, 4]."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), _const("one", 1), _const("zero_axis", [0]),
             helper.make_node("Gather", ["shape", "one"], ["t"], axis=0),
             helper.make_node("Unsqueeze", ["t", "zero_axis"], ["t1"])]
    if repeats == "int":  # squeezeformer: repeat_interleave(xs, 2, dim=1) on the dynamic time axis
        nodes += [_const("two", [2]), helper.make_node("Expand", ["two", "t1"], ["reps"])]
    nodes += [helper.make_node("Shape", ["reps"], ["reps_len"]),
              helper.make_node("ConstantOfShape", ["reps_len"], ["ones"],
                               value=helper.make_tensor("v", TensorProto.INT64, [1], [1])),
              helper.make_node("SplitToSequence", ["reps", "ones"], ["rseq"], axis=0),
              helper.make_node("SplitToSequence", ["x", "ones"], ["xseq"], axis=1),
              helper.make_node("Constant", [], ["cond"], value=helper.make_tensor("c", TensorProto.BOOL, [], [1])),
              helper.make_node("SequenceEmpty", [], ["empty"], dtype=TensorProto.FLOAT)]
    if trip == "constant":
        nodes.append(_const("trips", 5))
    body = helper.make_graph(
        [helper.make_node("SequenceAt", ["rseq", "i"], ["r_i"]),
         helper.make_node("SequenceAt", ["xseq", "i"], ["x_i"]),
         _const("axis2", [2]), helper.make_node("Unsqueeze", ["x_i", "axis2"], ["u"]),
         _const("head", [1, 1]), _const("tail", [4]),
         helper.make_node("Concat", ["head", "r_i", "tail"], ["shp"], axis=0),
         helper.make_node("Expand", ["u", "shp"], ["e"]), _const("target", [0, -1, 4]),
         helper.make_node("Reshape", ["e", "target"], ["piece"]),
         helper.make_node("SequenceInsert", ["seq_in", "piece"], ["seq_out"]),
         helper.make_node("Identity", ["c_in"], ["c_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_sequence_value_info("seq_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_sequence_value_info("seq_out", TensorProto.FLOAT, None)])
    nodes += [helper.make_node("Loop", ["trips" if trip == "constant" else "t1", "cond", "empty"], ["seq"], body=body),
              helper.make_node("ConcatFromSequence", ["seq"], ["y"], axis=1)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 4])]
    if repeats == "input":
        inputs.append(helper.make_tensor_value_info("reps", TensorProto.INT64, ["T"]))
    return _model(nodes, inputs, "y")


def unrolled_sequence_form(order=(0, 1, 2), count="piece"):
    """SplitToSequence pieces taken one by one with SequenceAt, x[B, 3, 4], repeats [1, 2, 3] on dim 1."""
    nodes = [_const("reps", [1, 2, 3]), _const("ones", [1, 1, 1]),
             helper.make_node("SplitToSequence", ["reps", "ones"], ["rseq"], axis=0),
             helper.make_node("SplitToSequence", ["x", "ones"], ["xseq"], axis=1),
             _const("axis2", [2]), _const("head", [1, 1]), _const("tail", [4]), _const("target", [0, -1, 4])]
    for i in range(3):
        nodes += [_const(f"i{i}", i), helper.make_node("SequenceAt", ["rseq", f"i{i}"], [f"r{i}"]),
                  helper.make_node("SequenceAt", ["xseq", f"i{i}"], [f"x{i}"]),
                  helper.make_node("Unsqueeze", [f"x{i}", "axis2"], [f"u{i}"])]
        if count == "shifted":  # the count is computed from the piece: not provably the repeats tensor
            nodes += [_const(f"k{i}", [1]), helper.make_node("Add", [f"r{i}", f"k{i}"], [f"s{i}"])]
        nodes += [helper.make_node("Concat", ["head", f"s{i}" if count == "shifted" else f"r{i}", "tail"],
                                   [f"shp{i}"], axis=0),
                  helper.make_node("Expand", [f"u{i}", f"shp{i}"], [f"e{i}"]),
                  helper.make_node("Reshape", [f"e{i}", "target"], [f"p{i}"])]
    nodes.append(helper.make_node("Concat", [f"p{i}" for i in order], ["y"], axis=1))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 4])], "y")


def tile_two_axes():
    """Unsqueeze → Tile([1, 1, 2, 2]) → Reshape: tiles the last axis too, so it is not repeat_interleave."""
    nodes = [_const("axis", [2]), helper.make_node("Unsqueeze", ["x", "axis"], ["u"]), _const("reps", [1, 1, 2, 2]),
             helper.make_node("Tile", ["u", "reps"], ["t"]), _const("target", [0, -1, 8]),
             helper.make_node("Reshape", ["t", "target"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 4])], "y")


HAND_BUILT = {  # name: model, form, ops after the fix, numpy reference
    "loop_int_dynamic_axis": (loop_form("int"), "loop", ["Unsqueeze", "Expand", "Reshape"],
                              lambda x: np.repeat(x, 2, axis=1)),
    "loop_repeats_input": (loop_form("input"), "loop", None, lambda x, r: np.repeat(x, r, axis=1)),
    "unrolled_sequence": (unrolled_sequence_form(), "unrolled-sequence", ["Gather"],
                          lambda x: np.repeat(x, [1, 2, 3], axis=1)),
}


@pytest.mark.parametrize("name", HAND_BUILT)
def test_older_exporter_forms(name):
    model, form, ops, reference = HAND_BUILT[name]
    result = repair(model)
    [finding] = result.before.findings
    assert f"in the {form} form" in finding.message and finding.fix.safety is Safety.SAFE
    assert [a.rule for a in result.applied] == ["GF002"] and not result.after.findings
    if ops is not None:
        assert [n.op_type for n in result.model.graph.node if n.op_type != "Constant"] == ops
    assert not any(n.op_type in ("Loop", "SequenceAt", "SplitToSequence") for n in result.model.graph.node)
    onnx.checker.check_model(result.model, full_check=True)
    rng = np.random.default_rng(0)
    for b, t in ((1, 3), (2, 3), (4, 3)) if "unrolled" in name else ((1, 1), (2, 5), (3, 8)):
        x = rng.standard_normal((b, t, 4)).astype(np.float32)
        args = [x] + ([rng.integers(0, 4, t).astype(np.int64)] if name == "loop_repeats_input" else [])
        names = ["x", "reps"][: len(args)]
        want = reference(*args)
        assert np.array_equal(run(result.model, names, args), want)
        assert np.array_equal(run(model, names, args), want)  # these hand-built forms run; the fix keeps them


@pytest.mark.parametrize(("model", "reason"), [
    (tile_two_axes(), "repeat other axes too"),
    (unrolled_sequence_form(order=(0, 2, 1)), "do not take the input's slices once each, in order"),
    (unrolled_sequence_form(count="shifted"), "comes from neither a constant nor a unit split"),
    (loop_form("int", trip="constant"), "the trip count is not x.size(1)"),
])
def test_unprovable_candidates_are_rejected_with_a_reason(model, reason):
    result = repair(model)
    assert not result.before.findings and not result.applied
    assert any(reason in r.reason for r in result.before.rejections), result.before.rejections


# ---------------------------------------------------------------------- wenet MQA / GQA: the headline case

@pytest.fixture(scope="module", params=[1, 2], ids=["mqa", "gqa"])
def wenet(request, tmp_path_factory):
    build = sample_module("wenet_mqa").build

    path = tmp_path_factory.mktemp("wenet") / "model.onnx"
    module = build(path, h_kv=request.param)
    return module, onnx.load(path)


def test_wenet_attention_repaired_smaller_than_onnxsim_and_equal(wenet):
    module, model = wenet
    result = repair(model)
    assert len(result.before.findings) == 2 and len(result.applied) == 2  # keys and values
    assert len(result.model.graph.node) < len(model.graph.node)
    simplified, ok = onnxsim.simplify(model)
    assert ok
    full = graphfix.repair(model, validate=False, simplify=True, only=("GF002",)).model
    assert len(full.graph.node) < len(simplified.graph.node)
    assert not any(n.op_type in ("Tile", "OneHot") for n in full.graph.node)
    onnx.checker.check_model(result.model, full_check=True)
    for b, t in ((1, 1), (2, 10), (3, 17)):
        x = torch.randn(b, t, 32)
        with torch.no_grad():
            want = module(x).numpy()
        np.testing.assert_allclose(run(full, ["x"], [x]), want, rtol=1e-5, atol=1e-5)


class RunTimeRepeats(torch.nn.Module):
    """A length regulator whose counts the model computes (helper 133: `h.repeat_interleave(ids[0] % 3 + 1, 1)`
    on a Llama): the TorchScript exporter's Loop form, whose body's Reshape is right and whose trips follow the
    length. It runs in onnxruntime at every size; GF002 called it an error ("bakes the element count") and
    `diagnose` exited 1 on a healthy model. TensorRT still rejects its Sequence ops: a warning."""

    def forward(self, x):
        return torch.repeat_interleave(x, (x[0, 0] > 0).long() + 1, dim=2)


def test_a_loop_form_that_runs_is_a_warning():
    model = export(RunTimeRepeats(), (torch.randn(2, 3, 6),), ["x"], {"x": [0, 2]}, False, 17)
    for batch, length in [(1, 1), (2, 6), (3, 17)]:
        x = torch.randn(batch, 3, length)
        assert np.array_equal(run(model, ["x"], [x.numpy()]), RunTimeRepeats()(x).numpy())
    (finding,) = repair(model).before.findings
    assert "loop form" in finding.message and finding.severity.name == "WARNING", finding.message
    broken = export(TensorRepeat(1), (torch.randn(2, 3, 4),), ["x"], {"x": [0, 1, 2]}, False, 17)
    (finding,) = repair(broken).before.findings
    assert "loop form" in finding.message and finding.severity.name == "ERROR", finding.message
