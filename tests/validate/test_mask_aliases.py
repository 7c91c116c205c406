"""A mask input whose dims the exporter named apart from the input it masks is probed at that input's sizes
(graphfix.validate.sizes.mask_aliases). torch.export with `Dim.DYNAMIC` names GPT-2's `attention_mask` [s6, s81]
apart from `input_ids` [s33, s50] (GPT-2 indexes the mask, so no traced op equates them); probed apart, the
model fails where PyTorch fails too, and a healthy export got a GF004 error and `repair` exit 1."""

from __future__ import annotations

import warnings

import onnx.parser
import pytest

import graphfix
from graphfix.validate import ValidationOptions, probe_sizes
from graphfix.validate.sizes import mask_aliases


def model(text: str) -> onnx.ModelProto:
    return onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]>\n' + text)


def test_a_mask_named_apart_takes_the_sizes_of_the_input_it_masks():
    m = model("""
    g (int64[s33, s50] input_ids, int64[s6, s81] attention_mask) => (int64[s33, s50] y) {
        y = Mul(input_ids, attention_mask)
    }""")
    assert mask_aliases(m) == {"s6": "s33", "s81": "s50"}
    bindings = probe_sizes(m, ValidationOptions())
    assert len(bindings) == 3
    assert all(b["s6"] == b["s33"] and b["s81"] == b["s50"] for b in bindings)


def test_masks_of_another_rank_or_type_or_sharing_a_dim_keep_their_own_sizes():
    m = model("""
    g (float[B, T, 8] features, bool[B, S] memory_mask, int64[B, U] tokens, int64[B, U] token_mask)
      => (float[B, T, 8] y) {
        y = Identity(features)
    }""")
    assert mask_aliases(m) == {}  # rank or type differs from every partner; token_mask names the same dims


def test_gpt2_exported_with_dynamo_is_healthy(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from fixtures.library_models import import_transformers

    transformers = import_transformers()

    class LastHidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64)
            self.model = transformers.GPT2Model(config)

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    torch.manual_seed(0)
    module = LastHidden().eval()
    ids = torch.randint(1, 100, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, 13:] = 0
    dynamic = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
    path = tmp_path / "gpt2.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (ids, mask), str(path), dynamo=True, input_names=["input_ids", "attention_mask"],
                          output_names=["hidden"], dynamic_shapes=(dynamic, dynamic))
    names = [[d.dim_param for d in i.type.tensor_type.shape.dim] for i in onnx.load(str(path)).graph.input]
    assert names[0] != names[1]  # the exporter named them apart: the case this is about
    assert not [f for f in graphfix.diagnose(str(path)) if f.severity.value == "error"]
    result = graphfix.repair(str(path), output=str(tmp_path / "out.onnx"))
    assert result.status == "unchanged" and result.validation["passed"], result.validation
