"""Build the Wenet MQA sample: multi-query attention with torch.repeat_interleave (wenet #2517 before PR #2519).

    python make_model.py            # writes model.onnx next to this file

A tiny attention block in Wenet's style (h=4 query heads, h_kv=1 shared key/value head, d_k=8) with dynamic
batch and time, exported with the TorchScript exporter (dynamo=False), as Wenet's export scripts do.
"""

import math
import warnings
from pathlib import Path

import torch
from torch import nn


class MultiQueryAttention(nn.Module):
    def __init__(self, n_feat: int = 32, h: int = 4, h_kv: int = 1, d_k: int = 8):
        super().__init__()
        self.h, self.h_kv, self.d_k = h, h_kv, d_k
        self.linear_q = nn.Linear(n_feat, h * d_k)
        self.linear_k = nn.Linear(n_feat, h_kv * d_k)
        self.linear_v = nn.Linear(n_feat, h_kv * d_k)
        self.linear_out = nn.Linear(h * d_k, n_feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_batch = x.size(0)
        q = self.linear_q(x).view(n_batch, -1, self.h, self.d_k).transpose(1, 2)     # (B, h, T, d_k)
        k = self.linear_k(x).view(n_batch, -1, self.h_kv, self.d_k).transpose(1, 2)  # (B, h_kv, T, d_k)
        v = self.linear_v(x).view(n_batch, -1, self.h_kv, self.d_k).transpose(1, 2)
        # The seed pattern (wenet/transformer/attention.py before PR #2519):
        k = torch.repeat_interleave(k, self.h // self.h_kv, dim=-3)
        v = torch.repeat_interleave(v, self.h // self.h_kv, dim=-3)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k)
        out = torch.matmul(torch.softmax(scores, dim=-1), v)                          # (B, h, T, d_k)
        return self.linear_out(out.transpose(1, 2).reshape(n_batch, -1, self.h * self.d_k))


def build(path: Path, h_kv: int = 1, opset: int = 17) -> MultiQueryAttention:
    torch.manual_seed(0)
    module = MultiQueryAttention(h_kv=h_kv).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 10, 32),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "time"}},
                          opset_version=opset, dynamo=False)
    return module


if __name__ == "__main__":
    build(Path(__file__).with_name("model.onnx"))
