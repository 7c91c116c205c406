"""GF004 trace-baked-shape: sizes captured as constants by tracing, found and (where possible) recomputed."""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphfix
from graphfix.core.rule import Safety
from graphfix.validate import ValidationOptions

# --- modules: the traced-size pattern (bad) and the same code written the right way (good) ------------------


class BoxHead(nn.Module):  # Faster R-CNN: box_sum = int(...) then reshape(box_sum, 3, 4)
    def __init__(self, good=False):
        super().__init__()
        self.good, self.fc = good, nn.Linear(16, 12)

    def forward(self, x):
        n = x.shape[0] if self.good else int(x.shape[0])
        return self.fc(x).reshape(n, 3, 4)


class NanoHead(nn.Module):  # nanodet: literal batch 1
    def __init__(self, good=False):
        super().__init__()
        self.good = good

    def forward(self, x):
        return x.reshape(x.shape[0] if self.good else 1, 3, -1).softmax(1)


class ExpandHead(nn.Module):  # cls-token expand and an expand of the data itself with int() sizes
    def __init__(self, good=False):
        super().__init__()
        self.good, self.cls = good, nn.Parameter(torch.randn(1, 3))

    def forward(self, x):
        b, t = (x.shape[0], x.shape[1]) if self.good else (int(x.shape[0]), int(x.shape[1]))
        return self.cls.expand(b, -1) * 2, x.unsqueeze(-1).expand(b, t, 3) + 1


class SliceHead(nn.Module):  # x[:, :int(T)] and x[:, :int(T) - 1]
    def __init__(self, good=False):
        super().__init__()
        self.good = good

    def forward(self, x):
        n = x.shape[1] if self.good else int(x.shape[1])
        return x[:, :n] * 2, x[:, : n - 1]


class RangeHead(nn.Module):  # torch.arange / torch.zeros of an int() size, folded into constants
    def __init__(self, good=False):
        super().__init__()
        self.good = good

    def forward(self, x):
        n = x.shape[1] if self.good else int(x.shape[1])
        return x + torch.arange(n), x * torch.ones(n)


class SplitHead(nn.Module):  # per-item Python list of sizes
    def forward(self, x):
        half = int(x.shape[1]) // 2
        a, b = x.split([half, int(x.shape[1]) - half], dim=1)
        return a.sum(1) + b.sum(1)


class PadHead(nn.Module):  # pad to a multiple of 4, computed with math.ceil (bad) or tensor arithmetic (good)
    def __init__(self, good=False):
        super().__init__()
        self.good = good

    def forward(self, x):
        t = x.shape[1]
        pad = (-t) % 4 if self.good else int(math.ceil(t / 4) * 4 - t)
        return F.pad(x, (0, pad))


class ConvPad(nn.Module):  # a constant pad that has nothing to do with the size: must not fire
    def forward(self, x):
        return F.pad(x, (0, 3))


# name -> (module factory, export shape, dynamic dims, other sizes to run)
MODULES = {
    "box": (BoxHead, (14, 16), {0: "N"}, [(5, 16), (30, 16)]),
    "nano": (NanoHead, (1, 3, 4, 5), {0: "B", 2: "H", 3: "W"}, [(4, 3, 4, 5), (2, 3, 6, 2)]),
    "expand": (ExpandHead, (2, 5), {0: "B", 1: "T"}, [(3, 7), (1, 2)]),
    "slice": (SliceHead, (2, 7), {0: "B", 1: "T"}, [(2, 9), (3, 12)]),
    "range": (RangeHead, (2, 7), {0: "B", 1: "T"}, [(3, 9), (1, 4)]),
    "split": (SplitHead, (2, 7), {0: "B", 1: "T"}, [(2, 9)]),
    "pad": (PadHead, (2, 7), {0: "B", 1: "T"}, [(2, 10)]),
    "convpad": (ConvPad, (2, 7), {0: "B", 1: "T"}, [(2, 10)]),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """export(name, good, opset, dynamo) -> path, memoised so each module is exported once per variant."""
    cache: dict = {}
    folder = tmp_path_factory.mktemp("gf004")

    def export(name, good=False, opset=17, dynamo=False):
        key = (name, good, opset, dynamo)
        if key not in cache:
            factory, shape, dims, _ = MODULES[name]
            torch.manual_seed(0)
            module = (factory(good) if name not in ("split", "convpad") else factory()).eval()
            path = folder / f"{name}_{int(good)}_{opset}_{int(dynamo)}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if dynamo:
                    from torch.export import Dim

                    spec = {"x": {i: Dim(n, min=1) for i, n in dims.items()}}
                    torch.onnx.export(module, (torch.randn(shape),), dynamic_shapes=spec, opset_version=opset,
                                      dynamo=True, input_names=["x"]).save(str(path))
                else:
                    torch.onnx.export(module, (torch.randn(shape),), str(path), input_names=["x"], opset_version=opset,
                                      dynamic_axes={"x": dims}, dynamo=False)
            torch.manual_seed(0)
            reference = (factory(True) if name not in ("split", "convpad") else factory()).eval()
            cache[key] = (path, reference)  # the module as intended: what a repaired model must compute
        return cache[key]

    return export


def run(model, x):
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def gf004(findings):
    """Findings about sizes captured at export: GF004's shape vectors and GF006's folded constants (RangeHead)."""
    return [f for f in findings if f.rule in ("GF004", "GF006")]


def assert_matches_torch(model, module, name):
    """The repaired model equals the PyTorch module at the export size and >= 2 other sizes."""
    _, shape, _, others = MODULES[name]
    for size in [shape, *others]:
        x = np.random.default_rng(1).standard_normal(size).astype(np.float32)
        with torch.no_grad():
            expected = module(torch.from_numpy(x))
        expected = expected if isinstance(expected, tuple) else (expected,)
        for got, want in zip(run(model, x), expected, strict=True):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


def broken_somewhere(path, module, name):
    """The original export fails, or differs from PyTorch, at some size other than the export size."""
    try:
        assert_matches_torch(onnx.load(path), module, name)
    except Exception:
        return True
    return False


# --- fires and fixes ---------------------------------------------------------------------------------------
FIXED = [
    # name, opset, dynamo, trace_shapes, unsafe, safety of the fixes, ops expected after the fix
    ("box", 13, False, None, False, {Safety.SAFE}, ["Gemm", "Reshape"]),
    ("box", 17, False, None, False, {Safety.SAFE}, ["Gemm", "Reshape"]),
    ("nano", 13, False, None, True, {Safety.UNSAFE}, ["Reshape", "Softmax"]),
    # a given size no constraint pins: reshape(1, 3, -1) runs at every B, so the 1 may be meant (issue 14)
    ("nano", 17, False, {"x": (1, 3, 4, 5)}, True, {Safety.UNSAFE}, ["Reshape", "Softmax"]),
    ("box", 17, False, {"x": (14, 16)}, False, {Safety.SAFE}, ["Gemm", "Reshape"]),  # given and solved
    ("nano", 18, True, None, True, {Safety.UNSAFE}, ["Shape", "Concat", "Reshape", "Softmax"]),
    ("expand", 13, False, None, True, {Safety.SAFE, Safety.UNSAFE}, ["Shape", "Gather", "Concat", "Expand"]),
    ("expand", 17, False, None, True, {Safety.SAFE, Safety.UNSAFE}, ["Shape", "Concat", "Expand"]),
    ("slice", 17, False, {"x": (2, 7)}, True, {Safety.UNSAFE}, ["Slice", "Slice", "Mul"]),  # given, not solved
    # arange(int(T)) is also arange(T).clamp(max=c) for any c >= T - 1: unsafe; ones(int(T)) is determined
    # x * ones(int(T)) is also x * (arange(T) < L) for any L >= T: unsafe too (GF006)
    ("range", 13, False, None, True, {Safety.UNSAFE}, ["Shape", "Gather", "Range", "Cast", "Add", "Mul"]),
    ("range", 17, False, None, True, {Safety.UNSAFE}, ["Shape", "Range", "Cast", "Add", "Mul"]),
]


@pytest.mark.parametrize("name,opset,dynamo,trace,unsafe,safeties,ops", FIXED, ids=[
    f"{c[0]}-op{c[1]}-{'dynamo' if c[2] else 'ts'}{'-traced' if c[3] else ''}" for c in FIXED])
def test_baked_shape_is_found_and_fixed(exported, name, opset, dynamo, trace, unsafe, safeties, ops):
    path, module = exported(name, opset=opset, dynamo=dynamo)
    assert broken_somewhere(path, module, name)
    findings = gf004(graphfix.diagnose(path, static=True, trace_shapes=trace))
    assert findings and all(f.fix is not None for f in findings)
    assert {f.fix.safety for f in findings} == safeties
    assert all(f.hint and f.nodes and f.shapes for f in findings)
    result = graphfix.repair(path, validate=False, simplify=False, unsafe_fixes=unsafe, trace_shapes=trace,
                             only=("GF004", "GF006"))
    assert result.applied and not gf004(result.after.findings)
    onnx.checker.check_model(result.model, full_check=True)
    produced = [n.op_type for n in result.model.graph.node]
    assert all(op in produced for op in ops), produced
    assert_matches_torch(result.model, module, name)


def test_unsafe_fix_waits_for_the_flag(exported):
    path, _ = exported("nano", opset=17)
    result = graphfix.repair(path, validate=False, simplify=False, only=("GF004", "GF006"))
    assert not result.applied and gf004(result.after.findings)


def test_faster_rcnn_seed_message(exported):
    path, _ = exported("box", opset=17)
    with pytest.raises(Exception, match=r"cannot be reshaped to the requested shape. Input shape:\{5,12\}"):
        run(path, np.zeros((5, 16), np.float32))
    (finding,) = gf004(graphfix.diagnose(path, static=True))
    assert "N=14" in finding.message and finding.nodes == ["/Reshape"]


# --- fires, not fixable: the information is gone ------------------------------------------------------------
UNFIXABLE = [
    ("split", 13, False, None, "Cannot split"),
    ("split", 17, False, None, "Cannot split"),
    ("pad", 17, False, {"x": (2, 7)}, "math.ceil"),
    ("pad", 18, True, {"x": (2, 7)}, "math.ceil"),
]


@pytest.mark.parametrize("name,opset,dynamo,trace,text", UNFIXABLE,
                         ids=[f"{c[0]}-op{c[1]}-{'dynamo' if c[2] else 'ts'}" for c in UNFIXABLE])
def test_lost_information_is_explained(exported, name, opset, dynamo, trace, text):
    path, _ = exported(name, opset=opset, dynamo=dynamo)
    findings = gf004(graphfix.diagnose(path, static=True, trace_shapes=trace))
    assert len(findings) == 1 and findings[0].fix is None
    assert text in findings[0].message and findings[0].hint


def test_pad_needs_the_export_size(exported):
    path, _ = exported("pad", opset=17)
    assert not gf004(graphfix.diagnose(path, static=True))


# --- must not fire -----------------------------------------------------------------------------------------
HEALTHY = [
    ("box", 13, False), ("box", 17, False), ("nano", 17, False), ("nano", 18, True), ("expand", 17, False),
    ("slice", 17, False), ("range", 17, False), ("pad", 17, False), ("range", 18, True),
]


@pytest.mark.parametrize("name,opset,dynamo", HEALTHY,
                         ids=[f"{c[0]}-op{c[1]}-{'dynamo' if c[2] else 'ts'}" for c in HEALTHY])
def test_healthy_export_is_quiet(exported, name, opset, dynamo):
    path, module = exported(name, good=True, opset=opset, dynamo=dynamo)
    _, shape, _, _ = MODULES[name]
    assert not gf004(graphfix.diagnose(path, static=True, trace_shapes={"x": shape}))
    assert_matches_torch(onnx.load(path), module, name)


def test_constant_conv_padding_is_quiet(exported):
    path, _ = exported("convpad", opset=17)
    assert not gf004(graphfix.diagnose(path, static=True, trace_shapes={"x": (2, 7)}))


def test_dynamo_specialises_int_sizes_instead_of_baking(exported):
    """torch 2.13's dynamo exporter turns `int(x.shape[0])` into a static input dim: nothing for GF004."""
    path, _ = exported("box", opset=18, dynamo=True)
    dims = [d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [14, 16]
    assert not gf004(graphfix.diagnose(path, static=True))


@pytest.mark.parametrize("target", [[-1, 32], [0, -1, 32], [-1, 4, 8]])
def test_flattening_reshape_of_static_trailing_dims_is_quiet(target):
    # onnxsim rewrites `x @ W` on x[batch, time, 32] as Reshape(x, [-1, 32]) -> Gemm: the 32 is x's own last dim.
    dims = ", ".join(str(t) for t in target)
    model = onnx.parser.parse_model(f"""<ir_version: 10, opset_import: ["" : 17]>
g (float[batch, time, 32] x) => (float[?, ?] y) <int64[{len(target)}] s = {{{dims}}}> {{ y = Reshape(x, s) }}""")
    assert [f for f in graphfix.diagnose(model, static=True, only=["GF004"])] == []


# --- a constant that only equals a given export size: a guess, not a bake ------------------------------------
def reshape_model(target: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(f"""<ir_version: 10, opset_import: ["" : 17]>
g (float[B, 8] x) => (float[?, ?, ?] y) <int64[3] shape = {{{target}}}> {{ [reshape] y = Reshape(x, shape) }}""")


@pytest.mark.parametrize("target, solved", [("2, -1, 4", False), ("2, 4, 2", True)])
def test_a_given_size_makes_a_safe_error_only_where_a_constraint_pins_it(target, solved):
    # [2, -1, 4] runs at every B: the 2 equals the traced batch by coincidence as likely as by a bake.
    # [2, 4, 2] conserves 8B elements only at B=2: solved from the element count, so the rewrite is SAFE.
    model = reshape_model(target)
    (finding,) = gf004(graphfix.diagnose(model, static=True, trace_shapes={"x": (2, 8)}))
    assert finding.fix.safety is (Safety.SAFE if solved else Safety.UNSAFE)
    assert finding.severity.value == ("error" if solved else "warning")
    assert ("given, not solved" in finding.fix.reason) is not solved
    result = graphfix.repair(model, trace_shapes={"x": (2, 8)})
    assert bool(result.applied) is solved and result.status == ("repaired" if solved else "unchanged"), result.error
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    if not solved:  # unchanged: the healthy output at B=3 is still [2, 3, 4]
        assert run(result.model, x)[0].shape == (2, 3, 4)


EXPANDS = {  # a new axis of 2 where the batch was 2 at export: a repeat count, or a cls token's baked batch
    "repeat": "u = Unsqueeze(x, one)\n e = Expand(u, s)\n y = Reshape(e, flat)",  # repeat_interleave(x, 2, 1)
    "meets the batch": "e = Expand(c, s2)\n y = Add(e, x)",  # the Add broadcasts 2 against B: holds at B=2 only
}


@pytest.mark.parametrize("name, solved", [("repeat", False), ("meets the batch", True)])
def test_an_expanded_axis_that_only_equals_a_given_size_is_a_warning(name, solved):
    """The same evidence as a Tile's repeats: a new axis of 2 equal to the batch given with --trace-shape is a
    warning (GF002 rewrites repeat_interleave's Tile into this Expand, and a batch-2 export was then refused); an
    error where the graph itself pins the batch there."""
    model = onnx.parser.parse_model(f"""<ir_version: 10, opset_import: ["" : 17]>
g (float[B, 8] x) => (float[?, ?] y) <int64[3] s = {{1, 2, 1}}, int64[2] s2 = {{2, 8}}, int64[1] one = {{1}},
 int64[2] flat = {{0, -1}}, float[1, 8] c = {{1, 2, 3, 4, 5, 6, 7, 8}}> {{ {EXPANDS[name]} }}""")
    (finding,) = gf004(graphfix.diagnose(model, static=True, trace_shapes={"x": (2, 8)}))
    assert finding.severity.value == ("error" if solved else "warning") and finding.fix.safety is Safety.UNSAFE
    result = graphfix.repair(model, trace_shapes={"x": (2, 8)})
    assert bool(result.error) is solved and "GF004" not in {fix.rule for fix in result.applied}, result.error


class ThirdsMax(nn.Module):  # reshape with a size computed in Python next to a model constant (#21)
    def forward(self, x):
        b, t = x.shape[0], x.shape[1]
        return x.reshape(b, int(t) // 3, 12).amax(-1)


def test_a_declared_dynamic_output_pins_which_entry_a_reshape_bakes(tmp_path):
    """Traced at T=6, `reshape(B, int(T) // 3, 12)` bakes [B, 2, 12]. The element count alone fits 12 = 2*T as well
    as 2 = T // 3 (on multiples of 3, where PyTorch runs too); 2*T returns [B, 2] at every T, which the output
    declared [B, G] rules out. One hypothesis is left: T // 3, rebuilt SAFE (before: 2*T written with exit 0, wrong
    at T=9), and the repair matches PyTorch at batch 1 and at lengths past the export one."""
    path = tmp_path / "thirds.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ThirdsMax(), (torch.randn(2, 6, 4),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"},
                                                                               "y": {0: "B", 1: "G"}})
    (finding,) = gf004(graphfix.diagnose(str(path), static=True))
    assert finding.fix.safety is Safety.SAFE and "entry 1 (2) is floor(T/3)" in finding.message, finding.message
    # the original runs at multiples of 3 only: the proof reaches `runs` (the default once the re-trace no longer
    # counts as evidence, #21); the values are checked against PyTorch here
    result = graphfix.repair(str(path), validation=ValidationOptions(require="runs"))
    assert result.status == "repaired", (result.error, result.validation and result.validation["reasons"])
    for batch, time in ((1, 9), (3, 12), (2, 15)):
        x = np.random.default_rng(time).standard_normal((batch, time, 4)).astype(np.float32)
        np.testing.assert_allclose(run(result.model, x)[0], ThirdsMax()(torch.from_numpy(x)).numpy(), rtol=1e-6)


def slice_model(consumer: str) -> onnx.ModelProto:
    """x [T, 4]: a Reshape to [32] pins T = 8; a Slice ends at 8 on T; `consumer` reads the slice."""
    return onnx.parser.parse_model(f"""<ir_version: 10, opset_import: ["" : 17]>
g (float[T, 4] x) => (float[32] flat, float[?, 4] y)
<int64[1] shape = {{32}}, int64[1] zero = {{0}}, int64[1] end = {{8}}> {{
  flat = Reshape(x, shape)
  cut = Slice(x, zero, end, zero)
  y = {consumer}
}}""")


@pytest.mark.parametrize("consumer, safety", [("Relu(cut)", Safety.UNSAFE), ("Add(cut, x)", Safety.SAFE)])
def test_a_slice_end_at_a_solved_size_is_safe_only_where_a_consumer_needs_it_to_follow_the_size(consumer, safety):
    # the end 8 is T (to the end) or the model's own first 8 rows; only `Add(cut, x)` needs the slice to keep T
    findings = [f for f in gf004(graphfix.diagnose(slice_model(consumer), static=True)) if "Slice" in f.message]
    assert len(findings) == 1 and findings[0].fix.safety is safety, [f.message for f in findings]
    if safety is Safety.UNSAFE:
        assert "or a fixed length 8" in findings[0].fix.reason
