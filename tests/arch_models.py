"""Tiny real architectures from transformers configs (random weights), and their ONNX exports.

Each model is wrapped so that its forward takes plain tensors and returns one tensor: the exporters then see
exactly the inputs a deployment would feed (token ids and attention mask, or raw audio).

    module, example, feeds_for = build("llama")
    export(module, example, "llama.onnx", exporter="dynamo")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

VOCAB = 100
HIDDEN = 32
LAYERS = 2
HEADS = 4
KV_HEADS = 2  # grouped-query attention in Llama
ARCHITECTURES = ("bert", "llama", "llama-eager", "qwen2", "hubert", "wav2vec2", "whisper-encoder", "whisper-decoder")
# llama, qwen2: default SDPA attention, grouped-query (KV_HEADS)
EXPORTERS = ("torchscript", "dynamo")
# transformers 5 builds Whisper's decoder mask with aten::diff, which the TorchScript exporter cannot export
NOT_EXPORTABLE = {("whisper-decoder", "torchscript")}
# (batch, time) bindings the tests run; time is tokens for text models, audio samples for HuBERT.
TEXT_SIZES = ((1, 5), (2, 8), (3, 13))
AUDIO_SIZES = ((1, 400), (2, 640), (3, 1000))


class TextModel(nn.Module):
    """forward(input_ids, attention_mask) -> last_hidden_state or logits, with keyword arguments inside."""

    def __init__(self, model: nn.Module, output: str):
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True)
        return out[self.output]


class WhisperEncoder(nn.Module):
    """forward(input_features) -> last_hidden_state; Whisper's encoder takes exactly 2 * max_source_positions
    frames, so only the batch is dynamic ("time" sizes the mel frames, fixed)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_features):
        return self.model(input_features=input_features, return_dict=True).last_hidden_state


class WhisperDecoder(nn.Module):
    """forward(input_ids, encoder_hidden_states) -> last_hidden_state."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, encoder_hidden_states):
        return self.model(input_ids=input_ids, encoder_hidden_states=encoder_hidden_states, use_cache=False,
                          return_dict=True).last_hidden_state


class AudioModel(nn.Module):
    """forward(input_values) -> last_hidden_state."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_values):
        return self.model(input_values=input_values, return_dict=True).last_hidden_state


@dataclass
class Arch:
    name: str
    module: nn.Module
    input_names: tuple[str, ...]
    sizes: tuple[tuple[int, int], ...]
    make_inputs: Callable[[int, int], dict[str, np.ndarray]]

    def example(self) -> tuple[torch.Tensor, ...]:
        feeds = self.make_inputs(*self.sizes[1])
        return tuple(torch.from_numpy(feeds[name]) for name in self.input_names)

    def torch_outputs(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return self.module(*(torch.from_numpy(feeds[name]) for name in self.input_names)).numpy()


def text_inputs(batch: int, time: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 1000 + time)
    mask = np.ones((batch, time), dtype=np.int64)
    mask[1:, time - 2:] = 0  # right padding on all but the first row
    return {"input_ids": rng.integers(0, VOCAB, (batch, time), dtype=np.int64), "attention_mask": mask}


def audio_inputs(batch: int, time: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 1000 + time)
    return {"input_values": rng.standard_normal((batch, time)).astype(np.float32)}


def build(name: str) -> Arch:
    """A tiny randomly initialised model (torch.manual_seed(0)), in eval mode."""
    from fixtures.torch_models import transformers_hiding_torchvision

    with transformers_hiding_torchvision() as tf:
        return _build(tf, name)


WHISPER_FRAMES = 2 * 16  # max_source_positions = 16


def whisper_features(batch: int, time: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 1000 + time)
    return {"input_features": rng.standard_normal((batch, 8, WHISPER_FRAMES)).astype(np.float32)}


def whisper_tokens(batch: int, time: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 1000 + time)
    return {"input_ids": rng.integers(0, VOCAB, (batch, time), dtype=np.int64),
            "encoder_hidden_states": rng.standard_normal((batch, 16, HIDDEN)).astype(np.float32)}


def _build(tf, name: str) -> Arch:
    torch.manual_seed(0)
    common = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  intermediate_size=64)
    if name == "bert":
        model = tf.BertModel(tf.BertConfig(vocab_size=VOCAB, max_position_embeddings=64, **common))
        arch = Arch(name, TextModel(model, "last_hidden_state"), ("input_ids", "attention_mask"), TEXT_SIZES,
                    text_inputs)
    elif name in ("llama", "llama-eager"):
        # Eager attention repeats the KV heads with expand + reshape (repeat_kv), the pattern GF002 looks at.
        if name == "llama-eager":
            common["attn_implementation"] = "eager"
        config = tf.LlamaConfig(vocab_size=VOCAB, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
                                tie_word_embeddings=False, **common)
        arch = Arch(name, TextModel(tf.LlamaForCausalLM(config), "logits"), ("input_ids", "attention_mask"),
                    TEXT_SIZES, text_inputs)
    elif name == "qwen2":
        config = tf.Qwen2Config(vocab_size=VOCAB, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
                                tie_word_embeddings=False, **common)
        arch = Arch(name, TextModel(tf.Qwen2ForCausalLM(config), "logits"), ("input_ids", "attention_mask"),
                    TEXT_SIZES, text_inputs)
    elif name in ("hubert", "wav2vec2"):
        audio = dict(conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                     num_conv_pos_embedding_groups=4, do_stable_layer_norm=False, feat_extract_norm="group", **common)
        model = (tf.HubertModel(tf.HubertConfig(**audio)) if name == "hubert"
                 else tf.Wav2Vec2Model(tf.Wav2Vec2Config(**audio)))
        arch = Arch(name, AudioModel(model), ("input_values",), AUDIO_SIZES, audio_inputs)
    elif name.startswith("whisper"):
        config = tf.WhisperConfig(vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
                                  encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=64,
                                  decoder_ffn_dim=64, num_mel_bins=8, max_source_positions=16,
                                  max_target_positions=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                  decoder_start_token_id=1)
        whisper = tf.WhisperModel(config)
        if name == "whisper-encoder":
            arch = Arch(name, WhisperEncoder(whisper.get_encoder()), ("input_features",), TEXT_SIZES,
                        whisper_features)
        else:
            arch = Arch(name, WhisperDecoder(whisper.get_decoder()), ("input_ids", "encoder_hidden_states"),
                        TEXT_SIZES, whisper_tokens)
    else:
        raise ValueError(f"unknown architecture {name!r}")
    arch.module.eval()
    return arch


def export(arch: Arch, path, exporter: str) -> None:
    """Export with dynamic batch and time; TorchScript at opset 17, dynamo at its default opset (>= 18)."""
    example = arch.example()
    if exporter == "torchscript":
        axes = {name: {0: "batch", 1: "time"} for name in arch.input_names}
        axes["output"] = {0: "batch", 1: "frames" if arch.name in ("hubert", "wav2vec2") else "time"}
        if arch.name == "whisper-encoder":
            axes = {"input_features": {0: "batch"}, "output": {0: "batch"}}
        elif arch.name == "whisper-decoder":
            axes["encoder_hidden_states"] = {0: "batch", 1: "source"}
        torch.onnx.export(arch.module, example, str(path), dynamo=False, opset_version=17,
                          input_names=list(arch.input_names), output_names=["output"], dynamic_axes=axes)
    elif exporter == "dynamo":
        batch, time = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("time", min=2, max=4096)
        shapes = {name: {0: batch, 1: time} for name in arch.input_names}
        if arch.name == "whisper-encoder":
            shapes = {"input_features": {0: batch}}
        elif arch.name == "whisper-decoder":
            shapes["encoder_hidden_states"] = {0: batch, 1: torch.export.Dim("source", min=2, max=4096)}
        program = torch.onnx.export(arch.module, example, dynamo=True, input_names=list(arch.input_names),
                                    output_names=["output"], dynamic_shapes=shapes, external_data=False)
        program.save(str(path), external_data=False)
    else:
        raise ValueError(f"unknown exporter {exporter!r}")
