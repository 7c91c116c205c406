"""Benchmark models, generated here (no downloads): transformers configs with random weights, synthetic chains.

    python benchmarks/models.py BUILDER PATH [N]      # e.g. chain_graph /tmp/chain.onnx 10000
    python benchmarks/models.py issue23 FOLDER LAYERS TINY   # the three models of issue 23's table, one torch import
    python benchmarks/models.py check_bert_pad MODEL REFERENCE.npz   # onnxruntime against PyTorch's outputs

`issue23` builds the Llama-style decoder with LAYERS layers (external data), BERT-base with the `h[pad] = 0`
idiom (which GF003 must fix) and a healthy BERT-base; TINY=1 gives each a toy config (the benchmark's own test).
Beside the padded BERT it saves PyTorch's outputs at three sizes, so that checking a repair needs no torch.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper


def chain_graph(path: Path, nodes: int) -> Path:
    """A [B, T, 64] tensor through `nodes` elementwise ops with small constants: a large graph with tiny weights."""
    ops = ("Add", "Mul", "Relu", "Sub")
    graph_nodes, inits = [], []
    current = "x"
    for i in range(nodes):
        op = ops[i % len(ops)]
        out = f"t{i}"
        if op == "Relu":
            graph_nodes.append(helper.make_node(op, [current], [out], name=f"/chain/{op}_{i}"))
        else:
            const = f"c{i}"
            inits.append(helper.make_tensor(const, TensorProto.FLOAT, [64], np.full(64, 0.5, np.float32)))
            graph_nodes.append(helper.make_node(op, [current, const], [out], name=f"/chain/{op}_{i}"))
        current = out
    graph = helper.make_graph(
        graph_nodes, "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 64])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["B", "T", 64])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, path)
    return path


def _torchaudio_without_its_library() -> None:
    """The test-only torchaudio (requirements-nodeps.txt) is a CUDA build that transformers imports whenever it is
    installed: import it without its compiled library, as the tests do (tests/fixtures/torchaudio_cpu.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fixtures.torchaudio_cpu import install

    install()


def bert_base(path: Path) -> Path:
    """BERT-base (110M parameters, ~435 MB inline) exported with the TorchScript exporter, dynamic batch and time."""
    import torch

    transformers = _transformers()
    BertConfig, BertModel = transformers.BertConfig, transformers.BertModel

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = BertModel(BertConfig()).eval()

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    torch.manual_seed(0)
    ids = torch.randint(0, 30522, (2, 16))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder().eval(), (ids, torch.ones_like(ids)), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["hidden"],
                          dynamic_axes={"input_ids": {0: "B", 1: "T"}, "attention_mask": {0: "B", 1: "T"}})
    return path


PAD_SIZES = ((1, 5), (2, 15), (3, 40))  # (batch, tokens): batch 1, the export size, longer than the export


def _transformers():
    """transformers, with a torchvision that cannot load (a CUDA build beside the CPU torch) hidden from it, and
    torchaudio imported without its compiled library."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        sys.modules["torchvision"] = None
    _torchaudio_without_its_library()
    import transformers

    return transformers


def _bert_config(tiny: bool):
    tf = _transformers()
    if tiny:
        return tf.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64)
    return tf.BertConfig()  # BERT-base: 12 layers, hidden 768, 110M parameters (~435 MB inline)


def _random_bert(tiny: bool, forward):
    """(config, a module whose forward is `forward(bert, *inputs)`, bert a BertModel with seeded random weights),
    in eval mode."""
    import torch

    config = _bert_config(tiny)
    torch.manual_seed(0)

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = _transformers().BertModel(config)

        def forward(self, *inputs):
            return forward(self.bert, *inputs)

    return config, Wrapped().eval()


def pad_inputs(batch: int, tokens: int, vocab: int) -> dict[str, np.ndarray]:
    """Token ids, and a pad mask that pads the last two tokens of every row but the first."""
    rng = np.random.default_rng(batch * 1000 + tokens)
    pad = np.zeros((batch, tokens), dtype=bool)
    pad[1:, tokens - 2:] = True
    return {"input_ids": rng.integers(0, vocab, (batch, tokens), dtype=np.int64), "pad": pad}


def bert_pad(path: Path, tiny: bool = False) -> Path:
    """BERT (base, random weights) under `h = bert(x).last_hidden_state; h[pad] = 0`, TorchScript export with dynamic
    batch and length: the exporter writes `Where(pad[B, T], 0, h[B, T, C])`, which cannot run until GF003 fixes it.
    PyTorch's outputs at PAD_SIZES go to `<path>.npz`."""
    import torch

    def padded(bert, input_ids, pad):
        h = bert(input_ids=input_ids, attention_mask=(~pad).long()).last_hidden_state
        h[pad] = 0
        return h

    config, module = _random_bert(tiny, padded)
    feeds = pad_inputs(2, 15, config.vocab_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(torch.from_numpy(v) for v in feeds.values()), str(path), dynamo=False,
                          opset_version=17, input_names=["input_ids", "pad"], output_names=["hidden"],
                          dynamic_axes={"input_ids": {0: "B", 1: "T"}, "pad": {0: "B", 1: "T"},
                                        "hidden": {0: "B", 1: "T"}})
        reference = {}
        for batch, tokens in PAD_SIZES:
            sized = pad_inputs(batch, tokens, config.vocab_size)
            reference[f"{batch}x{tokens}"] = module(*(torch.from_numpy(v) for v in sized.values())).numpy()
    np.savez(f"{path}.npz", vocab=config.vocab_size, **reference)
    return path


def check_bert_pad(model: Path, reference: Path) -> None:
    """Exit 0 when onnxruntime runs `model` and matches PyTorch's saved outputs at every size; else one line, 1."""
    import onnxruntime as ort

    saved = np.load(reference)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for batch, tokens in PAD_SIZES:
        got = session.run(None, pad_inputs(batch, tokens, int(saved["vocab"])))[0]
        want = saved[f"{batch}x{tokens}"]
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4):
            sys.exit(f"batch {batch}, {tokens} tokens: differs from PyTorch (max |diff| "
                     f"{np.abs(got - want).max() if got.shape == want.shape else got.shape})")
    print(f"matches PyTorch at {len(PAD_SIZES)} sizes")


def bert(path: Path, tiny: bool = False) -> Path:
    """A healthy BERT (base, random weights), TorchScript export, dynamic batch and length."""
    import torch

    def encoder(bert, input_ids, attention_mask):
        return bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    config, module = _random_bert(tiny, encoder)
    ids = torch.randint(0, config.vocab_size, (2, 16))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (ids, torch.ones_like(ids)), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["hidden"],
                          dynamic_axes={"input_ids": {0: "B", 1: "T"}, "attention_mask": {0: "B", 1: "T"}})
    return path


def llama(path: Path, layers: int) -> Path:
    """A Llama-style decoder (grouped-query attention; Qwen3-0.6B's dimensions, `layers` of its 28 layers: the
    tied 622 MB embedding plus 63 MB a layer) exported with the dynamo exporter, its weights in external data."""
    import torch

    tf = _transformers()
    config = tf.LlamaConfig(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=layers,
                            num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096,
                            tie_word_embeddings=True, use_cache=False)
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(config).eval()

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.llama = model

        def forward(self, input_ids):
            return self.llama(input_ids=input_ids).logits

    ids = torch.randint(0, config.vocab_size, (1, 16))
    batch, seq = torch.export.Dim("B", max=64), torch.export.Dim("T", min=2, max=4096)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Decoder().eval(), (ids,), dynamo=True, input_names=["input_ids"],
                                    output_names=["logits"], dynamic_shapes={"input_ids": {0: batch, 1: seq}})
        program.save(str(path), external_data=True)
    return path


def toy_decoder(path: Path, layers: int) -> Path:
    """A toy decoder written with onnx.helper (the dynamo exporter takes 12 s even on a toy config): token
    embedding, `layers` residual MLP blocks, logits through the tied embedding; weights in external data."""
    rng = np.random.default_rng(0)
    vocab, width = 512, 64
    weights = {"embed": rng.standard_normal((vocab, width)).astype(np.float32)}
    nodes = [helper.make_node("Gather", ["embed", "input_ids"], ["h0"]),
             helper.make_node("Transpose", ["embed"], ["head"], perm=[1, 0])]
    for i in range(layers):
        weights[f"up{i}"] = rng.standard_normal((width, 2 * width)).astype(np.float32) * 0.1
        weights[f"down{i}"] = rng.standard_normal((2 * width, width)).astype(np.float32) * 0.1
        nodes += [helper.make_node("MatMul", [f"h{i}", f"up{i}"], [f"u{i}"]),
                  helper.make_node("Relu", [f"u{i}"], [f"r{i}"]),
                  helper.make_node("MatMul", [f"r{i}", f"down{i}"], [f"d{i}"]),
                  helper.make_node("Add", [f"h{i}", f"d{i}"], [f"h{i + 1}"])]
    nodes.append(helper.make_node("MatMul", [f"h{layers}", "head"], ["logits"]))
    graph = helper.make_graph(
        nodes, "toy_decoder", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "T"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "T", vocab])],
        [onnx.numpy_helper.from_array(array, name) for name, array in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, path, save_as_external_data=True, location=f"{path.name}.data", size_threshold=0)
    return path


def issue23(folder: Path, layers: int, tiny: int) -> None:
    """The models of issue 23's table, in one process (torch and transformers imported once). TINY=1: toy BERT
    configs, and a toy decoder in place of the exported Llama."""
    (folder / "llama").mkdir(parents=True, exist_ok=True)
    for name, build in (("bert_pad.onnx", bert_pad), ("bert.onnx", bert)):
        if not (folder / name).exists():
            build(folder / name, bool(tiny))
    decoder = folder / "llama" / "llama.onnx"
    if not decoder.exists():
        toy_decoder(decoder, layers) if tiny else llama(decoder, layers)


def bert_base_with_dead_branch(path: Path) -> Path:
    """BERT-base with a branch that reaches no output (GF001 removes it), so that `repair` runs the whole
    pipeline on a large model: fix, onnxsim simplification, validation at 3 sizes."""
    source = path.with_name("bert.onnx")
    if not source.exists():
        bert_base(source)
    model = onnx.load(source)
    hidden = model.graph.node[-1].output[0]
    model.graph.node.append(helper.make_node("Neg", [hidden], ["dead_branch"], name="/dead/Neg"))
    onnx.save(model, path)
    return path


def llama_06b_with_dead_branch(path: Path) -> Path:
    """The Llama export with a dead branch (GF001 removes it), beside it and sharing its external data file, so
    that `repair` runs fix, simplification and validation on a model over 2 GiB."""
    source = path.with_name("llama.onnx")
    if not source.exists():
        llama_06b(source)
    model = onnx.load(source, load_external_data=False)
    logits = model.graph.output[0].name
    model.graph.node.append(helper.make_node("Neg", [logits], ["dead_branch"], name="/dead/Neg"))
    onnx.save(model, path)
    return path


def llama_06b_with_scale_input(path: Path) -> Path:
    """The Llama export with a second input, a logit `scale`, that `graphfix freeze --input scale=1` can fold
    away (beside it and sharing its external data file)."""
    source = path.with_name("llama.onnx")
    if not source.exists():
        llama_06b(source)
    model = onnx.load(source, load_external_data=False)
    logits = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_unscaled" if o == logits else o for o in node.output]
    model.graph.node.append(helper.make_node("Mul", [f"{logits}_unscaled", "scale"], [logits], name="/scale/Mul"))
    model.graph.input.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1]))
    onnx.save(model, path)
    return path


def llama_06b(path: Path) -> Path:
    """A ~0.6B-parameter Llama-style decoder (grouped-query attention, Qwen3-0.6B's dimensions, all 28 layers)
    exported with the dynamo exporter; its weights (2.35 GB, over 2 GiB, so no single protobuf could hold them) go
    to external data beside the model."""
    return llama(path, 28)


def maskrcnn(path: Path) -> Path:
    """torchvision Mask R-CNN (ResNet-50 FPN, random weights, small images), TorchScript export with dynamic H, W;
    built by the test fixture, which registers torchvision's two compiled ops as Python CPU kernels."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fixtures.torchvision_models import build, export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export(build("maskrcnn_resnet50_fpn"), path)


if __name__ == "__main__":
    if sys.argv[1] == "check_bert_pad":
        check_bert_pad(Path(sys.argv[2]), Path(sys.argv[3]))
        sys.exit(0)
    builder = {"issue23": issue23, "maskrcnn": maskrcnn, "chain_graph": chain_graph, "bert_base": bert_base,
               "llama_06b": llama_06b,
               "bert_base_with_dead_branch": bert_base_with_dead_branch,
               "llama_06b_with_dead_branch": llama_06b_with_dead_branch,
               "llama_06b_with_scale_input": llama_06b_with_scale_input}[sys.argv[1]]
    builder(Path(sys.argv[2]), *(int(a) for a in sys.argv[3:]))
