"""Benchmark models, generated here (no downloads): transformers configs with random weights, synthetic chains.

    python benchmarks/models.py BUILDER PATH [N]      # e.g. chain_graph /tmp/chain.onnx 10000
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

    try:
        import torchvision  # noqa: F401
    except Exception:  # a CUDA build beside the CPU torch: transformers would import it and fail on its ops
        sys.modules["torchvision"] = None
    _torchaudio_without_its_library()
    from transformers import BertConfig, BertModel

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
    """A ~0.6B-parameter Llama-style decoder (grouped-query attention, Qwen3-0.6B's dimensions) exported with the
    dynamo exporter; its weights (2.35 GB, over 2 GiB, so no single protobuf could hold them) go to external data
    beside the model."""
    import torch

    _torchaudio_without_its_library()
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096,
                         tie_word_embeddings=True, use_cache=False)

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.llama = LlamaForCausalLM(config).eval()

        def forward(self, input_ids):
            return self.llama(input_ids=input_ids).logits

    torch.manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (1, 16))
    batch, seq = torch.export.Dim("B", max=64), torch.export.Dim("T", min=2, max=4096)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Decoder().eval(), (ids,), dynamo=True, input_names=["input_ids"],
                                    output_names=["logits"], dynamic_shapes={"input_ids": {0: batch, 1: seq}})
        program.save(str(path), external_data=True)
    return path


def maskrcnn(path: Path) -> Path:
    """torchvision Mask R-CNN (ResNet-50 FPN, random weights, small images), TorchScript export with dynamic H, W;
    built by the test fixture, which registers torchvision's two compiled ops as Python CPU kernels."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fixtures.torchvision_models import build, export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export(build("maskrcnn_resnet50_fpn"), path)


if __name__ == "__main__":
    builder = {"maskrcnn": maskrcnn, "chain_graph": chain_graph, "bert_base": bert_base, "llama_06b": llama_06b,
               "bert_base_with_dead_branch": bert_base_with_dead_branch,
               "llama_06b_with_dead_branch": llama_06b_with_dead_branch,
               "llama_06b_with_scale_input": llama_06b_with_scale_input}[sys.argv[1]]
    builder(Path(sys.argv[2]), *(int(a) for a in sys.argv[3:]))
