"""GF006 on a width computed in Python that no broadcast meets (#22, lengths from values): speechbrain's
`length_to_mask(lengths)` without `max_len` takes the mask's width from `lengths.max().item()`. Traced, `arange(T)`
is folded and compared with the lengths `[B, 1]`; the mask meets the time dim only where attention (here a
`view`) reshapes it with traced sizes, whose element count holds at the export length only. The size analysis
pins T there and `graphfix.analysis.pinned` follows it back to the constant. Its values 0, 1, ... are arange(T)
or a clamped arange: the fix is unsafe, applied with `--unsafe-fixes` (and by `graphfix.export`, where the module
settles it). tests/frontends exports speechbrain's own EncoderWrapper, which does this.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from conftest import run
from onnx import TensorProto, helper, numpy_helper

import graphfix
from graphfix.core.rule import Safety

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class LengthMasked(torch.nn.Module):
    """x [B, T, D] masked by absolute lengths [B] (the longest is T), the mask's width `lengths.max().item()`.
    `width`: "item" as speechbrain; "traced" gives the traced size (healthy); "learned" multiplies by a learned
    row of the export width instead of positions (not a formula); "clamped" caps the positions at 12 (the
    hypothesis the graph does not rule out: the unsafe fix is wrong past 13); "counted" also counts the positions
    below each length, a second folded copy of the same Python int that nothing pins."""

    def __init__(self, width: str = "item", export_length: int = 10):
        super().__init__()
        self.width = width
        self.row = torch.nn.Parameter(torch.randn(export_length))

    def forward(self, x, lengths):
        if self.width == "traced":
            positions = torch.arange(x.shape[1], dtype=lengths.dtype)
        elif self.width == "learned":
            positions = self.row * 0 + self.row  # a learned row as long as the export length
        else:
            positions = torch.arange(int(lengths.max().item()), dtype=lengths.dtype)
        if self.width == "clamped":
            positions = positions.clamp(max=12)
        mask = (positions.unsqueeze(0) < lengths.unsqueeze(1)).float()  # [B, width]
        masked = x * mask.reshape(x.shape[0], x.shape[1], 1)
        if self.width == "counted":
            count = torch.arange(int(lengths.max().item()), dtype=lengths.dtype)[None] <= lengths[:, None] - 1
            return masked + count.float().sum(-1)[:, None, None]
        return masked


def inputs(batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(batch * 100 + length)
    lengths = np.linspace(length, max(1, length // 2), batch).round().astype(np.float32)
    return rng.standard_normal((batch, length, 3)).astype(np.float32), lengths


def export(module, path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(torch.from_numpy(a) for a in inputs(2, 10)), str(path), dynamo=False,
                          opset_version=17, input_names=["x", "lengths"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "time"}, "lengths": {0: "batch"},
                                        "y": {0: "batch", 1: "time"}})
    return str(path)


def expected(module, batch: int, length: int) -> np.ndarray:
    with torch.no_grad():
        return module(*(torch.from_numpy(a) for a in inputs(batch, length))).numpy()


def feeds(batch: int, length: int) -> dict[str, np.ndarray]:
    return dict(zip(("x", "lengths"), inputs(batch, length), strict=True))


def test_a_width_from_item_is_found_where_a_reshape_pins_it(tmp_path):
    path = export(LengthMasked(), tmp_path / "item.onnx")
    with pytest.raises(Exception, match=r"10 by 12|cannot be reshaped"):
        run(path, feeds(2, 12))  # the export as it is: the width stays 10
    (finding,) = [f for f in graphfix.diagnose(path, static=True) if "holds only at time=10" in f.message]
    assert finding.rule == "GF006" and "arange(10) along axis" in finding.message and ".item()" in finding.message
    assert finding.fix.safety is Safety.UNSAFE and "clamp" in finding.fix.reason


def test_default_repair_names_the_unsafe_fix_and_writes_nothing(tmp_path):
    path = export(LengthMasked(), tmp_path / "item.onnx")
    result = graphfix.repair(path, output=str(tmp_path / "fixed.onnx"))
    assert result.output is None and not (tmp_path / "fixed.onnx").exists()
    assert any("holds only at time=10" in f.message and f.fix.safety is Safety.UNSAFE for f in result.after.findings)


def test_unsafe_fixes_rebuild_the_width_from_the_length(tmp_path):
    module = LengthMasked().eval()
    path = export(module, tmp_path / "item.onnx")
    result = graphfix.repair(path, output=str(tmp_path / "fixed.onnx"), unsafe_fixes=True)
    assert result.status == "repaired", result.error
    assert any("Range(0, Shape(x)[1])" in a.summary for a in result.applied)
    for batch, length in ((1, 7), (2, 10), (3, 31)):
        np.testing.assert_allclose(run(str(tmp_path / "fixed.onnx"), feeds(batch, length))[0],
                                   expected(module, batch, length), rtol=1e-5, atol=1e-6)


def companion(module, path, probes: bool = True):
    """graphfix.export of `module` at (2, 10), checked at (1, 7) and (3, 31) (`probes`), else at its own resized
    inputs (random lengths, which the module itself rejects: their maximum is not the length)."""
    example = tuple(torch.from_numpy(a) for a in inputs(2, 10))
    extra = {"probe_args": [tuple(torch.from_numpy(a) for a in inputs(b, t)) for b, t in ((1, 7), (3, 31))]} \
        if probes else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return graphfix.export(module, example, path, input_names=["x", "lengths"], output_names=["y"],
                               opset_version=17, dynamic_axes={"x": {0: "batch", 1: "time"}, "lengths": {0: "batch"},
                                                               "y": {0: "batch", 1: "time"}}, **extra)


def test_the_export_companion_settles_the_unsafe_fix_with_the_module(tmp_path):
    """graphfix.export: the safe repair writes nothing, so it tries the unsafe one beside the scratch export and
    keeps it only because it matches the module at the example and two other sizes."""
    module = LengthMasked().eval()
    report = companion(module, tmp_path / "out.onnx")
    assert report.ok and len(report.checks) == 3, report.summary()
    np.testing.assert_allclose(run(str(tmp_path / "out.onnx"), feeds(4, 17))[0], expected(module, 4, 17),
                               rtol=1e-5, atol=1e-6)


def test_the_export_companion_writes_nothing_the_module_contradicts_or_did_not_check(tmp_path):
    """Clamped positions: the unsafe arange is wrong past 13, which the module shows at 31 frames; with the
    companion's own probes the module rejects every other size, and the export size alone settles nothing."""
    module = LengthMasked("clamped").eval()
    for probes in (True, False):
        report = companion(module, tmp_path / "out.onnx", probes)
        assert not report.ok and not (tmp_path / "out.onnx").exists(), report.summary()


def test_the_traced_width_gets_no_finding(tmp_path):
    path = export(LengthMasked("traced"), tmp_path / "traced.onnx")
    assert not [f for f in graphfix.diagnose(path, static=True) if f.severity.value == "error"]


def test_the_dynamo_export_keeps_the_item_width_and_gets_no_finding(tmp_path):
    """torch.export keeps `.item()` as a size computed at run time (ReduceMax, then Range): nothing is baked. The
    model runs only where the lengths' maximum is the length, which the probe's float lengths respect, so `repair`
    proves it unchanged (exit 0)."""
    module = LengthMasked().eval()
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(torch.from_numpy(a) for a in inputs(2, 10)), str(tmp_path / "dyn.onnx"),
                          dynamo=True, input_names=["x", "lengths"], output_names=["y"],
                          dynamic_shapes=({0: batch, 1: time}, {0: batch}))
    assert not [f for f in graphfix.diagnose(str(tmp_path / "dyn.onnx"), static=True) if f.severity.value == "error"]
    np.testing.assert_allclose(run(str(tmp_path / "dyn.onnx"), feeds(3, 31))[0], expected(module, 3, 31),
                               rtol=1e-5, atol=1e-6)
    result = graphfix.repair(str(tmp_path / "dyn.onnx"), output=str(tmp_path / "out.onnx"))
    assert result.status == "unchanged" and result.validation["passed"], result.validation


def test_a_learned_row_pinned_the_same_way_is_reported_but_never_regrown(tmp_path):
    path = export(LengthMasked("learned"), tmp_path / "learned.onnx")
    (finding,) = [f for f in graphfix.diagnose(path, static=True) if "holds only at time=10" in f.message]
    assert finding.fix is None and "not an arange" in finding.message
    result = graphfix.repair(path, output=str(tmp_path / "fixed.onnx"), unsafe_fixes=True)
    assert result.output is None


def test_a_second_copy_of_the_width_leaves_the_finding_without_a_fix(tmp_path):
    """`.item()` read twice: two folded arange(10) constants, one pinned, one only counted (it runs at any length).
    Rebuilding the pinned one alone would leave the count at 10: GF006 offers no fix. The counted one is GF014's
    (positions as long as the length the Reshape solves, compared with values): with --unsafe-fixes it is rebuilt
    first, then the pinned one, with no copy left, and the two follow the length together, as PyTorch's do."""
    module = LengthMasked("counted").eval()
    path = export(module, tmp_path / "counted.onnx")
    (finding,) = [f for f in graphfix.diagnose(path, static=True) if "holds only at time=10" in f.message]
    assert finding.fix is None and "and so is" in finding.message
    assert graphfix.repair(path, output=str(tmp_path / "kept.onnx")).output is None
    result = graphfix.repair(path, output=str(tmp_path / "fixed.onnx"), unsafe_fixes=True)
    assert [a.rule for a in result.applied] == ["GF014", "GF006"], result.applied
    for batch, length in ((1, 7), (2, 10), (3, 31)):
        np.testing.assert_allclose(run(str(tmp_path / "fixed.onnx"), feeds(batch, length))[0],
                                   expected(module, batch, length), rtol=1e-5, atol=1e-6)


def test_labels_and_a_pinned_reshape_target_are_not_taken_for_a_width(tmp_path):
    """A one-hot over 10 classes (`arange(10) == labels`) in a model whose Reshape target bakes `int(T) * 10`: the
    pin is in the target (GF004's), so the classes constant is not blamed."""
    class OneHot(torch.nn.Module):
        def forward(self, x, labels):
            onehot = (torch.arange(10) == labels[:, None, None]).float()  # [B, 1, 10]
            return (x * onehot).reshape(x.shape[0], int(x.shape[1]) * 10)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(OneHot(), (torch.randn(2, 10, 1), torch.tensor([3, 7])), str(tmp_path / "onehot.onnx"),
                          dynamo=False, opset_version=17, input_names=["x", "labels"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "time"}, "labels": {0: "batch"}, "y": {0: "batch"}})
    findings = graphfix.diagnose(str(tmp_path / "onehot.onnx"), static=True)
    assert not [f for f in findings if f.rule == "GF006"] and [f for f in findings if f.rule == "GF004"]


def pinned_graph(positions: np.ndarray, fed: bool = False, opset: int = 17, counted: bool = False) -> onnx.ModelProto:
    """`Less(P, lengths[:, None])` (or `Equal` for strings), cast and reshaped to `[b, t, 1]` to mask x: a
    hand-built pinned width, P an initializer (`fed`: also a graph input, which a caller may feed; `counted`:
    also summed into the output, where nothing pins its width)."""
    kind = TensorProto.STRING if positions.dtype == object else TensorProto.FLOAT
    extra = [helper.make_tensor_value_info("P", kind, list(positions.shape))] if fed else []
    constants = {"P": positions, "axis": np.array([1]), "start": np.array([0]), "end": np.array([2]),
                 "one": np.array([1])}
    compare = "Equal" if kind == TensorProto.STRING else "Less"
    nodes = [helper.make_node("Unsqueeze", ["lengths", "axis"], ["L"]), helper.make_node(compare, ["P", "L"], ["m"]),
             helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT), helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "start", "end"], ["bt"]),
             helper.make_node("Concat", ["bt", "one"], ["target"], axis=0),
             helper.make_node("Reshape", ["mf", "target"], ["r"]),
             helper.make_node("Mul", ["x", "r"], ["masked" if counted else "y"])]
    if counted:
        nodes += [helper.make_node("ReduceSum", ["P"], ["total"], keepdims=0),
                  helper.make_node("Add", ["masked", "total"], ["y"])]
    graph = helper.make_graph(
        nodes, "pinned", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 3]),
                          helper.make_tensor_value_info("lengths", kind, ["b"]), *extra],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", 3])],
        [numpy_helper.from_array(v, k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def test_a_hand_built_pinned_width_is_found_but_not_a_fed_or_a_string_constant(tmp_path):
    arange = np.arange(10, dtype=np.float32)[None]
    letters = np.array([[chr(97 + i) for i in range(10)]], dtype=object)
    for name, model, found in (("plain", pinned_graph(arange), True), ("fed", pinned_graph(arange, fed=True), False),
                               ("letters", pinned_graph(letters, opset=19), False)):
        path = str(tmp_path / f"{name}.onnx")
        onnx.save(model, path)
        pinned = [f for f in graphfix.diagnose(path, static=True) if "holds only at" in f.message]
        assert bool(pinned) == found, (name, pinned)
        assert not pinned or pinned[0].fix is not None


def test_positions_also_read_off_the_pinned_way_are_not_rebuilt(tmp_path):
    """One constant read by the mask and by a sum (which runs at any length): rebuilding it would change the sum."""
    path = str(tmp_path / "counted.onnx")
    onnx.save(pinned_graph(np.arange(10, dtype=np.float32)[None], counted=True), path)
    (finding,) = [f for f in graphfix.diagnose(path, static=True) if "holds only at" in f.message]
    assert finding.fix is None and "ReduceSum" in finding.message and "reads it too" in finding.message


def test_a_constant_that_meets_the_size_directly_is_reported_once(tmp_path):
    """P [1, 10] added to x summed to [b, t] is `baked_operands`' case (it meets t where it is read); a widening
    elsewhere (Q < lengths) makes the pinned search run too, which must not report P a second time."""
    nodes = [helper.make_node("Unsqueeze", ["lengths", "one"], ["L"]),
             helper.make_node("ReduceSum", ["x", "two"], ["S"], keepdims=0),
             helper.make_node("Add", ["S", "P"], ["A"]),
             helper.make_node("Less", ["Q", "L"], ["m"]), helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["mf", "one"], ["count"], keepdims=1),
             helper.make_node("Mul", ["A", "count"], ["y"])]
    positions = np.arange(10, dtype=np.float32)[None]
    graph = helper.make_graph(
        nodes, "direct", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 3]),
                          helper.make_tensor_value_info("lengths", TensorProto.FLOAT, ["b"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t"])],
        [numpy_helper.from_array(v, k) for k, v in {"P": positions, "Q": positions.copy(), "one": np.array([1]),
                                                    "two": np.array([2])}.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "direct.onnx"))
    about_p = [f for f in graphfix.diagnose(str(tmp_path / "direct.onnx"), static=True)
               if f.rule == "GF006" and f.severity.value == "error" and "'P'" in f.message]
    assert len(about_p) == 1 and "combines" in about_p[0].message, [f.message[:160] for f in about_p]
