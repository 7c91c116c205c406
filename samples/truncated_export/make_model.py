"""Build model.onnx: an export whose second output is a size captured as a constant, and an unused input.

`torch.tensor(float(x.shape[1]))` goes through Python, so the TorchScript exporter records the export-time
value (50.0) instead of a computation: the output is the same for every input. The `cache` input is never
read by forward(): the dynamo exporter keeps it as an unused graph input (the TorchScript exporter would prune
it, so callers feeding it fail with `Invalid Feed Input Name`; wenet #1197, pytorch #62951). Asked for a
dynamic `T`, torch 2.13's dynamo exporter specializes it to 50 because of the `float(...)`, silently.

    python make_model.py            # writes model.onnx next to this file
"""

from pathlib import Path

import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x, cache):
        length = torch.tensor(float(x.shape[1]))  # the bug: a size captured as a constant
        return self.proj(x), length


def export(path: Path, opset: int = 18) -> None:
    from torch.export import Dim

    torch.manual_seed(0)
    args = (torch.randn(1, 50, 8), torch.zeros(1, 4, 8))
    program = torch.onnx.export(Encoder().eval(), args, input_names=["x", "cache"], output_names=["y", "length"],
                                opset_version=opset, dynamo=True, dynamic_shapes={"x": {1: Dim("T")}, "cache": None})
    program.save(str(path))


if __name__ == "__main__":
    export(Path(__file__).with_name("model.onnx"))
