"""Build model.onnx: a tiny HuBERT-style encoder front that zeroes padded frames with `x[padding_mask] = 0`.

Mimics fairseq's TransformerEncoder.extract_features (fairseq #5595/#5596): `index_put(x, padding_mask, 0)`, the
positional convolution, layer norm, and `pad_to_multiple` with the `m = float(m)` patch users apply to get past
`AttributeError: 'Tensor' object has no attribute 'is_integer'` while tracing. Exported with the TorchScript
exporter (dynamo=False), dynamic batch and time.

    python make_model.py            # writes model.onnx next to this file
"""

import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

EMBED, FEATURES, MULTIPLE = 32, 16, 2


def pad_to_multiple(x, multiple, dim=-1, value=0):
    """fairseq.models.wav2vec.utils.pad_to_multiple, with the `float(m)` patch from the seed report."""
    tsz = x.size(dim)
    m = tsz / multiple
    m = float(m)  # the patch: under tracing `m` is a Tensor without .is_integer(); float() bakes it
    remainder = math.ceil(m) * multiple - tsz
    if m.is_integer():
        return x, 0
    pad_offset = (0,) * (-1 - dim) * 2
    return F.pad(x, (*pad_offset, 0, remainder), value=value), remainder


class TinyHubertEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.post_extract_proj = nn.Linear(FEATURES, EMBED)
        self.pos_conv = nn.Conv1d(EMBED, EMBED, kernel_size=4, padding=2, groups=4)
        self.layer_norm = nn.LayerNorm(EMBED)
        self.fc = nn.Linear(EMBED, EMBED)

    def forward(self, features, padding_mask):
        x = self.post_extract_proj(features)
        x[padding_mask] = 0  # fairseq utils.index_put(x, padding_mask, 0): exports as Where(mask[B,T], 0, x[B,T,C])
        x_conv = self.pos_conv(x.transpose(1, 2))[:, :, :-1].transpose(1, 2)
        x = self.layer_norm(x + F.gelu(x_conv))
        x, pad_length = pad_to_multiple(x, MULTIPLE, dim=-2, value=0)
        x = self.fc(x)
        if pad_length > 0:
            x = x[:, :-pad_length]
        return x


def build(path: Path, opset: int = 17) -> TinyHubertEncoder:
    torch.manual_seed(0)
    model = TinyHubertEncoder().eval()
    features = torch.randn(1, 100, FEATURES)
    padding_mask = torch.zeros(1, 100, dtype=torch.bool)
    padding_mask[:, 80:] = True
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarning about float(m): the branch is baked (GF004's business)
        torch.onnx.export(
            model, (features, padding_mask), str(path), dynamo=False, opset_version=opset,
            input_names=["features", "padding_mask"], output_names=["hidden"],
            dynamic_axes={"features": {0: "batch", 1: "time"}, "padding_mask": {0: "batch", 1: "time"},
                          "hidden": {0: "batch", 1: "time"}},
        )
    return model


if __name__ == "__main__":
    build(Path(__file__).with_name("model.onnx"))
