"""Build model.onnx (a cache that grows every step) and model_fixed.onnx (a fixed-size cache).

A tiny Wenet-style streaming chunk encoder (wenet `BaseEncoder.forward_chunk`): each call takes a chunk of
frames and the caches of the previous call, and returns the encoded chunk and the next caches:

    chunk [B, T, F], att_cache [L, H, Tc, 2*D], cnn_cache [L, B, C, K]
      -> output [B, T, C], r_att_cache [L, H, Tc', 2*D], r_cnn_cache [L, B, C, K]

Attention keys/values of the cache are concatenated with the chunk's (`torch.cat((key_cache, k), dim=2)`, as
wenet's MultiHeadedAttention does). The growing variant returns the whole concatenation (wenet with
`required_cache_size < 0`): the cache gains T frames per step. The fixed variant keeps the last Tc frames
(`new_cache[:, :, T:]`). Exported with the TorchScript exporter (dynamo=False), opset 17, dynamic T and Tc.

    python make_model.py            # writes model.onnx and model_fixed.onnx next to this file
"""

import math
import warnings
from pathlib import Path

import torch
from torch import nn

LAYERS, HEADS, HEAD_DIM, FEATURES, KERNEL = 2, 2, 8, 16, 3
CHANNELS = HEADS * HEAD_DIM


class ChunkLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(CHANNELS, 3 * CHANNELS)
        self.out = nn.Linear(CHANNELS, CHANNELS)
        self.conv = nn.Conv1d(CHANNELS, CHANNELS, KERNEL + 1, groups=CHANNELS)
        self.norm = nn.LayerNorm(CHANNELS)

    def forward(self, x, att_cache, cnn_cache, grow: bool):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)  # each [B, H, T, D]
        key_cache, value_cache = att_cache.unsqueeze(0).split(HEAD_DIM, dim=-1)  # [1, H, Tc, D]
        k = torch.cat((key_cache.expand(b, -1, -1, -1), k), dim=2)
        v = torch.cat((value_cache.expand(b, -1, -1, -1), v), dim=2)
        scores = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM), dim=-1)
        attn = (scores @ v).transpose(1, 2).reshape(b, t, CHANNELS)
        new_att = torch.cat((k, v), dim=-1)[0]  # [H, Tc + T, 2D]
        if not grow:
            new_att = new_att[:, t:]  # keep the last Tc frames: the cache size stays put
        y = torch.cat((cnn_cache, x.transpose(1, 2)), dim=2)  # [B, C, K + T]
        conv = self.conv(y).transpose(1, 2)  # [B, T, C]
        new_cnn = y[:, :, -KERNEL:]
        return self.norm(x + self.out(attn) + conv), new_att, new_cnn


class ChunkEncoder(nn.Module):
    def __init__(self, grow: bool):
        super().__init__()
        self.grow = grow
        self.proj = nn.Linear(FEATURES, CHANNELS)
        self.layers = nn.ModuleList(ChunkLayer() for _ in range(LAYERS))

    def forward(self, chunk, att_cache, cnn_cache):
        x = self.proj(chunk)
        att, cnn = [], []
        for i, layer in enumerate(self.layers):
            x, new_att, new_cnn = layer(x, att_cache[i], cnn_cache[i], self.grow)
            att.append(new_att)
            cnn.append(new_cnn)
        return x, torch.stack(att), torch.stack(cnn)


def build(path: Path, grow: bool, opset: int = 17) -> ChunkEncoder:
    torch.manual_seed(0)
    model = ChunkEncoder(grow).eval()
    chunk = torch.randn(1, 4, FEATURES)
    att_cache = torch.zeros(LAYERS, HEADS, 8, 2 * HEAD_DIM)
    cnn_cache = torch.zeros(LAYERS, 1, CHANNELS, KERNEL)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (chunk, att_cache, cnn_cache), str(path), dynamo=False, opset_version=opset,
            input_names=["chunk", "att_cache", "cnn_cache"], output_names=["output", "r_att_cache", "r_cnn_cache"],
            dynamic_axes={"chunk": {1: "T"}, "att_cache": {2: "Tc"}, "output": {1: "T"},
                          "r_att_cache": {2: "Tc_out"}},
        )
    return model


if __name__ == "__main__":
    here = Path(__file__).parent
    build(here / "model.onnx", grow=True)
    build(here / "model_fixed.onnx", grow=False)
