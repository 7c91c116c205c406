"""Runtime probing of a healthy decoder finds nothing: no size beyond the 64 positions the graph reveals, no
error from graphfix's own cut graphs. Whisper's decoder from a tiny transformers config, exported with dynamo."""

from __future__ import annotations

import warnings

import pytest

import graphfix
from graphfix.validate import ValidationOptions, probe_sizes
from graphfix.validate.graph_sizes import size_limit

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.slow
POSITIONS = 64


@pytest.fixture(scope="module")
def whisper_decoder(tmp_path_factory):
    from fixtures.torch_models import transformers_hiding_torchvision

    with transformers_hiding_torchvision() as tf:
        from transformers.models.whisper.modeling_whisper import WhisperDecoder
    WhisperConfig = tf.WhisperConfig

    config = WhisperConfig(vocab_size=100, d_model=32, decoder_layers=1, encoder_layers=1, decoder_attention_heads=2,
                           encoder_attention_heads=2, decoder_ffn_dim=64, encoder_ffn_dim=64,
                           max_target_positions=POSITIONS, max_source_positions=30, num_mel_bins=8, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = WhisperDecoder(config).eval()

        def forward(self, input_ids, encoder_hidden_states):
            return self.decoder(input_ids=input_ids, encoder_hidden_states=encoder_hidden_states,
                                use_cache=False).last_hidden_state

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("whisper") / "decoder.onnx"
    # exported with 50 tokens: the baked-size hint would probe 53 and 103 tokens without the table's limit
    ids, encoded = torch.randint(0, 100, (2, 50)), torch.randn(2, 30, 32)
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens", max=POSITIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Decoder().eval(), (ids, encoded), str(path), dynamo=True,
                          input_names=["input_ids", "encoder_hidden_states"], output_names=["hidden"],
                          dynamic_shapes={"input_ids": {0: batch, 1: tokens}, "encoder_hidden_states": {0: batch}})
    return path


def test_healthy_whisper_decoder_gets_no_runtime_finding(whisper_decoder):
    import onnx

    model = onnx.load(whisper_decoder, load_external_data=False)
    assert size_limit(model) == POSITIONS
    assert all(binding["tokens"] <= POSITIONS for binding in probe_sizes(model, ValidationOptions(num_sizes=8)))
    assert graphfix.diagnose(str(whisper_decoder)) == []
