"""`graphfix extract`: splitting an encoder-decoder export into encoder.onnx and decoder.onnx, proved against the
PyTorch encoder and decoder; external data; refusals; nothing written unless the part was checked."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
import torch
from click.testing import CliRunner
from conftest import run

from graphfix.cli import cli
from graphfix.cli import extract as extract_cli
from graphfix.core.errors import UsageError
from graphfix.io.loading import load_model
from graphfix.surgery import extract as extract_module
from graphfix.surgery.extract import extract, extract_proto
from graphfix.validate import ValidationOptions

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
if "extract" not in cli.commands:  # until the lead registers it in graphfix/cli/__init__.py
    cli.add_command(extract_cli.command)


def sample(name: str):
    spec = importlib.util.spec_from_file_location(f"sample_{name}", SAMPLES / name / "make_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


AED = sample("encoder_decoder")
SIZES = [(1, 50, 7), (2, 37, 3), (3, 8, 11)]  # batch, frames, tokens: frames and tokens vary independently


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def export(module, path: Path, dynamo: bool, opset: int) -> Path:
    features, tokens = torch.randn(2, 50, AED.FEATURES), torch.randint(0, AED.VOCAB, (2, 7))
    dims = {"features": {0: "batch", 1: "frames"}, "tokens": {0: "batch", 1: "tokens"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            batch, frames, tok = (torch.export.Dim(n) for n in ("batch", "frames", "tokens"))
            torch.onnx.export(module, (features, tokens), str(path), dynamo=True, opset_version=opset,
                              input_names=["features", "tokens"], output_names=["logits"],
                              dynamic_shapes=({0: batch, 1: frames}, {0: batch, 1: tok}), verbose=False)
        else:
            torch.onnx.export(module, (features, tokens), str(path), dynamo=False, opset_version=opset,
                              input_names=["features", "tokens"], output_names=["logits"],
                              dynamic_axes={**dims, "logits": {0: "batch", 1: "tokens"}})
    return path


def encoder_output(model: onnx.ModelProto) -> str:
    """The boundary: the last tensor the `encoder` submodule computes (TorchScript names nodes by scope,
    `/encoder/...`; dynamo records the scope in the node's `namespace` metadata)."""
    def in_encoder(node: onnx.NodeProto) -> bool:
        scope = {p.key: p.value for p in node.metadata_props}.get("namespace", "")
        return node.name.startswith("/encoder/") or "/encoder: " in scope

    return [n.output[0] for n in model.graph.node if in_encoder(n)][-1]


EXPORTS = [pytest.param((False, 17), id="torchscript-17"), pytest.param((False, 14), id="torchscript-14"),
           pytest.param((True, 18), id="dynamo-18")]


@pytest.fixture(scope="module", params=EXPORTS)
def exported(request, tmp_path_factory):
    dynamo, opset = request.param
    torch.manual_seed(0)
    module = AED.TinyAED().eval()
    folder = tmp_path_factory.mktemp("aed")
    try:
        path = export(module, folder / "model.onnx", dynamo, opset)
    except Exception as exc:  # the exporter itself, not graphfix
        pytest.skip(f"export failed: {type(exc).__name__}")
    return module, path


def feeds(batch: int, frames: int, tokens: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(batch * 100 + frames)
    return (rng.standard_normal((batch, frames, AED.FEATURES)).astype(np.float32),
            rng.integers(0, AED.VOCAB, (batch, tokens)).astype(np.int64))


def _shape_of_tokens_feeds_encoder(model: onnx.ModelProto) -> bool:
    """dynamo=True (torch 2.13) takes the shared `batch` size from Shape(tokens), even inside the encoder."""
    return any(n.op_type == "Shape" and n.input[0] == "tokens" for n in model.graph.node)


def test_split_encoder_decoder_matches_pytorch(exported, tmp_path):
    module, path = exported
    boundary = encoder_output(onnx.load(path))
    shapes = {"features": (None, None, AED.FEATURES)}
    encoder_inputs = ["features"]  # dynamo's Shape(tokens) in the encoder reads features' batch instead (helper 72)
    enc = extract(load_model(path), encoder_inputs, [boundary], tmp_path / "encoder.onnx",
                  ValidationOptions(shapes=shapes), rename={boundary: "encoder_out"})
    borrowed = "the sizes of tokens read from features (both declare them)" in enc.summary
    assert borrowed == _shape_of_tokens_feeds_encoder(onnx.load(path)), enc.summary
    dec = extract(load_model(path), [boundary, "tokens"], ["logits"], tmp_path / "decoder.onnx",
                  rename={boundary: "encoder_out"})
    assert enc.status == dec.status == "written", (enc.error, dec.error)
    for part in ("encoder.onnx", "decoder.onnx"):
        onnx.checker.check_model(onnx.load(tmp_path / part), full_check=True)
    encoder, decoder = onnx.load(tmp_path / "encoder.onnx"), onnx.load(tmp_path / "decoder.onnx")
    assert [i.name for i in encoder.graph.input] == encoder_inputs
    assert [o.name for o in encoder.graph.output] == ["encoder_out"]
    assert [i.name for i in decoder.graph.input] == ["encoder_out", "tokens"]
    whole = len(onnx.load(path).graph.node)
    assert len(encoder.graph.node) < whole and len(decoder.graph.node) < whole  # shape ops may be in both
    assert not any("decoder" in t.name for t in encoder.graph.initializer)
    for batch, frames, tokens in SIZES:
        x, t = feeds(batch, frames, tokens)
        with torch.no_grad():
            want_enc = module.encoder(torch.from_numpy(x))
            want_logits = module.decoder(want_enc, torch.from_numpy(t)).numpy()
        (got_enc,) = run(encoder, {"features": x, "tokens": t} if len(encoder_inputs) == 2 else {"features": x})
        np.testing.assert_allclose(got_enc, want_enc.numpy(), rtol=1e-4, atol=1e-5)
        (got_logits,) = run(decoder, {"encoder_out": got_enc, "tokens": t})
        np.testing.assert_allclose(got_logits, want_logits, rtol=1e-4, atol=1e-5)


def test_parts_keep_named_dims(exported, tmp_path):
    _, path = exported
    boundary = encoder_output(onnx.load(path))
    inputs = ["features"]
    extract(load_model(path), inputs, [boundary], tmp_path / "encoder.onnx")
    out = onnx.load(tmp_path / "encoder.onnx").graph.output[0]
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert dims[2] == AED.DIM and isinstance(dims[0], str) and isinstance(dims[1], str)


def test_external_data_is_copied_not_loaded(tmp_path, monkeypatch):
    torch.manual_seed(0)
    path = export(AED.TinyAED().eval(), tmp_path / "whole.onnx", False, 17)
    model = onnx.load(path)
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save_model(model, folder / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    boundary = encoder_output(model)

    def no_loading(*args, **kwargs):
        raise AssertionError("external data must not be loaded into Python")

    monkeypatch.setattr(onnx, "load_external_data_for_model", no_loading)
    result = extract(load_model(folder / "model.onnx"), [boundary, "tokens"], ["logits"], tmp_path / "out" / "dec.onnx")
    monkeypatch.undo()
    assert result.status == "written", result.error
    assert (tmp_path / "out" / "dec.onnx.data").stat().st_size > 0
    decoder = onnx.load(tmp_path / "out" / "dec.onnx", load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in decoder.graph.initializer)
    x, t = feeds(2, 9, 4)
    (expected,) = run(str(path), {"features": x, "tokens": t})
    enc_value = run(extract_proto(onnx.load(path), ["features"], [boundary]), {"features": x})
    (got,) = run(str(tmp_path / "out" / "dec.onnx"), {boundary: enc_value[0], "tokens": t})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def aed_path(tmp_path_factory):
    torch.manual_seed(0)
    return export(AED.TinyAED().eval(), tmp_path_factory.mktemp("aed17") / "model.onnx", False, 17)


@pytest.mark.parametrize(("inputs", "outputs", "message"), [
    (["tokens"], ["logits"], "also depend on graph input(s) features"),
    (["features", "tokens"], ["ENCODER"], "--inputs tokens feed(s) none of the outputs"),
    (["features"], ["/encoder/norm/LayerNormalization_outpt_0"], "did you mean"),
    (["encoder.norm.weight", "features"], ["ENCODER"], "is a weight"),
    (["features"], ["features"], "both an input and an output"),
])
def test_bad_boundaries_are_refused(aed_path, tmp_path, inputs, outputs, message):
    boundary = encoder_output(onnx.load(aed_path))
    outputs = [boundary if o == "ENCODER" else o for o in outputs]
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        extract(load_model(aed_path), inputs, outputs, tmp_path / "part.onnx")
    assert not (tmp_path / "part.onnx").exists()


def test_cli_recipe_and_exit_codes(aed_path, tmp_path):
    boundary = encoder_output(onnx.load(aed_path))
    code, out, _ = invoke("extract", aed_path, "--inputs", f"{boundary},tokens", "--outputs", "logits",
                          "--name", f"{boundary}=encoder_out", "-o", tmp_path / "decoder.onnx")
    assert code == 0 and "written" in out and "check: passed at 3/3" in out
    code, _, err = invoke("extract", aed_path, "--inputs", "tokens", "--outputs", "logits", "-o", tmp_path / "x.onnx")
    assert code == 2 and err.count("\n") == 1 and "features" in err
    code, _, err = invoke("extract", aed_path, "--inputs", "features", "--outputs", boundary, "--name",
                          f"{boundary}=features", "-o", tmp_path / "x.onnx")
    assert code == 2 and "already has a tensor named 'features'" in err
    assert not (tmp_path / "x.onnx").exists()
    before = aed_path.read_bytes()
    code, _, err = invoke("extract", aed_path, "--inputs", "features,tokens", "--outputs", "logits", "-o", aed_path)
    assert code == 2 and "would overwrite the input" in err and aed_path.read_bytes() == before


def test_nothing_is_written_when_the_check_fails(aed_path, tmp_path, monkeypatch):
    monkeypatch.setattr(extract_module, "check_part", lambda *a, **k: ([], ["the part disagrees (simulated)"]))
    code, out, _ = invoke("extract", aed_path, "--inputs", "features,tokens", "--outputs", "logits",
                          "-o", tmp_path / "part.onnx")
    assert code == 1 and "nothing written" in out
    assert list(tmp_path.iterdir()) == []


def test_a_part_keeps_what_only_its_subgraphs_read(tmp_path):
    """The dynamo exporter writes `torch.cond` as an If whose branches read `x` and the main graph's constants
    (helper 67): onnx's Extractor follows node inputs alone, and the part failed the checker (exit 1). The
    branches' outer reads, nested ones too, now come with the part, which matches the whole model."""
    model = onnx.parser.parse_model("""
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[B, T, 4] x) => (float[B, T, 4] y) <int64 axis = {1}, float scale = {3.0}> {
        total = ReduceSum<keepdims = 0>(x)
        zero = Constant<value = float {0.0}>()
        positive = Greater(total, zero)
        y = If(positive) <then_branch = then () => (float[B, T, 4] summed) {
            summed = CumSum(x, axis)
        }, else_branch = otherwise () => (float[B, T, 4] scaled) {
            inner = Not(positive)
            scaled = If(inner) <then_branch = deep () => (float[B, T, 4] times) {
                times = Mul(x, scale)
            }, else_branch = never () => (float[B, T, 4] same) {
                same = Identity(x)
            }>
        }>
    }""")
    whole, part = tmp_path / "cond.onnx", tmp_path / "part.onnx"
    onnx.save(model, whole)
    code, out, err = invoke("extract", whole, "--inputs", "x", "--outputs", "y", "-o", part)
    assert code == 0, out + err
    for sign in (1.0, -1.0):
        x = sign * np.abs(np.random.default_rng(0).standard_normal((2, 5, 4))).astype(np.float32)
        np.testing.assert_allclose(run(str(part), {"x": x})[0], run(str(whole), {"x": x})[0])


BRANCH_READS = """
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[N] x) => (float[N] y) <float zero = {0.0}> {
        a = Relu(x)
        b = Neg(x)
        total = ReduceSum<keepdims = 0>(x)
        positive = Greater(total, zero)
        y = If(positive) <then_branch = then () => (float[N] t) {
            t = Add(a, a)
        }, else_branch = otherwise () => (float[N] e) {
            e = Neg(b)
        }>
    }"""


def test_a_boundary_renamed_is_renamed_where_a_branch_reads_it(tmp_path):
    """Helper 69: `--name a=feat` renamed `a` in the main graph only, the branch still read `a`, and the part
    failed the checker; a new name that a branch defines (`t`) is refused, as any name the part holds."""
    whole, part = tmp_path / "branches.onnx", tmp_path / "part.onnx"
    onnx.save(onnx.parser.parse_model(BRANCH_READS), whole)
    code, out, err = invoke("extract", whole, "--inputs", "x,a", "--outputs", "y", "--name", "a=feat", "-o", part)
    assert code == 0, out + err
    x = np.linspace(-1, 2, 5, dtype=np.float32)
    np.testing.assert_allclose(run(str(part), {"x": x, "feat": np.maximum(x, 0)})[0], 2 * np.maximum(x, 0))
    code, out, err = invoke("extract", whole, "--inputs", "x,a", "--outputs", "y", "--name", "a=t", "-o",
                            tmp_path / "clash.onnx")
    assert code == 2 and "'t'" in err and not (tmp_path / "clash.onnx").exists(), out + err



SIZE_FROM_ANOTHER_INPUT = """
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[batch, frames, 4] x, int64[{tokens_batch}, tokens] t) => (float[batch, 4] y)
      <int64[1] minus = {{-1}}, int64[1] axes = {{1}}> {{
        b = Shape<start = 0, end = 1>(t)
        shape = Concat<axis = 0>(b, minus)
        h = ReduceMean<keepdims = 0>(x, axes)
        {body}
    }}"""
READ_AS_DATA = """r = Reshape(h, shape)
        f = Cast<to = 1>(t)
        s = ReduceSum<keepdims = 0>(f, axes)
        y = Add(r, s)"""


def _as_dynamo(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each node's module path in its metadata, as the dynamo exporter writes it."""
    for node in model.graph.node:
        node.metadata_props.add(key="namespace", value=f"model: {node.op_type}")
    return model


@pytest.mark.parametrize(("tokens_batch", "body", "dynamo", "borrowed"), [
    ("batch", "y = Reshape(h, shape)", True, True),  # both declare `batch` there: read from x
    ("batch", "y = Reshape(h, shape)", False, False),  # names in a TorchScript export's dynamic_axes prove nothing
    ("n", "y = Reshape(h, shape)", True, False),  # another symbol: nothing says they are equal
    ("batch", "y = Reshape(h, shape)\n        unused = Cast<to = 1>(t)", True, True),  # a node no output reads
    ("batch", READ_AS_DATA, True, False),  # t's values are read: the part needs t
])
def test_a_size_read_from_an_input_the_part_does_not_take_is_read_from_one_that_declares_it(
        tmp_path, tokens_batch, body, dynamo, borrowed):
    """Helper 72: dynamo reads a batch size two inputs share from either (an encoder's from the decoder's tokens);
    a part cut at `--inputs x` reads it from x where a dynamo export declares the dim under one symbol for both and
    the part reads nothing else of t, and is refused (exit 2) otherwise."""
    whole, part = tmp_path / "whole.onnx", tmp_path / "part.onnx"
    model = onnx.parser.parse_model(SIZE_FROM_ANOTHER_INPUT.format(tokens_batch=tokens_batch, body=body))
    onnx.save(_as_dynamo(model) if dynamo else model, whole)
    code, out, err = invoke("extract", whole, "--inputs", "x", "--outputs", "y", "-o", part)
    if not borrowed:
        assert code == 2 and "also depend on graph input(s) t" in err and not part.exists(), out + err
        return
    assert code == 0 and "the sizes of t read from x (both declare them)" in out, out + err
    assert [i.name for i in onnx.load(part).graph.input] == ["x"]
    x = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(run(str(part), {"x": x})[0], x.mean(1), rtol=1e-6)


UNTIED = """
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[batch, seq, 4] x, int64[batch, seq] t) => (float[batch, 4] y) <int64[1] axes = {1}> {
        n = Shape<start = 1, end = 2>(t)
        scale = Cast<to = 1>(n)
        h = ReduceMean<keepdims = 0>(x, axes)
        y = Mul(h, scale)
    }"""


def test_a_size_two_inputs_are_only_named_alike_for_is_not_borrowed(tmp_path):
    """Helper 75: a TorchScript export's `dynamic_axes` may give two inputs one name (`seq`) that the model does not
    tie; the probes feed them equal and cannot tell. Such a name is no proof (refused, exit 2, as any cut that
    needs t); and should a dynamo export hold one, the whole is run with t's dim one longer: it runs, and the part
    that read t's length from x differs there, so the part is refused (exit 1, nothing written)."""
    whole, part = tmp_path / "whole.onnx", tmp_path / "part.onnx"
    onnx.save(onnx.parser.parse_model(UNTIED), whole)
    code, out, err = invoke("extract", whole, "--inputs", "x", "--outputs", "y", "-o", part)
    assert code == 2 and "also depend on graph input(s) t" in err and not part.exists(), out + err
    onnx.save(_as_dynamo(onnx.parser.parse_model(UNTIED)), whole)
    code, out, err = invoke("extract", whole, "--inputs", "x", "--outputs", "y", "-o", part)
    assert code == 1 and not part.exists(), out + err
    assert "the model does not tie them; give t in --inputs" in out + err, out + err
