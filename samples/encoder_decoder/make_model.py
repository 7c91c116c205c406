"""Build model.onnx: a tiny attention encoder-decoder (AED) ASR model exported as one graph.

FireRedASR's AED model (and Whisper-style models in general) is exported whole, but deployed as two models: the
encoder runs once per utterance, the decoder once per token with the encoder output. This module follows that
layout: a convolutional front end and a self-attention layer over the audio features (encoder), then token
embeddings, cross-attention to the encoder output and a projection to the vocabulary (decoder):

    features [batch, frames, 16], tokens [batch, tokens] (int64) -> logits [batch, tokens, 40]

Exported with the TorchScript exporter (dynamo=False), opset 17, dynamic batch, frames and tokens.

    python make_model.py            # writes model.onnx next to this file
"""

import math
import warnings
from pathlib import Path

import torch
from torch import nn

FEATURES, DIM, HEADS, VOCAB = 16, 32, 4, 40


class Attention(nn.Module):
    """Multi-head attention written out (nn.MultiheadAttention's fast path does not export)."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(DIM, DIM) for _ in range(4))

    def forward(self, query, memory):
        b, t, _ = query.shape

        def heads(x):
            return x.view(b, -1, HEADS, DIM // HEADS).transpose(1, 2)

        q, k, v = heads(self.q(query)), heads(self.k(memory)), heads(self.v(memory))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS), dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, t, DIM))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(FEATURES, DIM, kernel_size=3, padding=1)
        self.attn = Attention()
        self.norm = nn.LayerNorm(DIM)

    def forward(self, features):
        x = torch.relu(self.conv(features.transpose(1, 2))).transpose(1, 2)
        return self.norm(x + self.attn(x, x))


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.cross = Attention()
        self.norm = nn.LayerNorm(DIM)
        self.proj = nn.Linear(DIM, VOCAB)

    def forward(self, encoder_out, tokens):
        y = self.embed(tokens)
        y = self.norm(y + self.cross(y, encoder_out))
        return self.proj(y)


class TinyAED(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()

    def forward(self, features, tokens):
        return self.decoder(self.encoder(features), tokens)


ENCODER_OUT = "/encoder/norm/LayerNormalization_output_0"  # the tensor between encoder and decoder


def build(path: Path, opset: int = 17) -> TinyAED:
    torch.manual_seed(0)
    model = TinyAED().eval()
    features = torch.randn(2, 50, FEATURES)
    tokens = torch.randint(0, VOCAB, (2, 7))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (features, tokens), str(path), dynamo=False, opset_version=opset,
            input_names=["features", "tokens"], output_names=["logits"],
            dynamic_axes={"features": {0: "batch", 1: "frames"}, "tokens": {0: "batch", 1: "tokens"},
                          "logits": {0: "batch", 1: "tokens"}},
        )
    return model


if __name__ == "__main__":
    build(Path(__file__).parent / "model.onnx")
