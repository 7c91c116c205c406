"""Build model.onnx: a tiny Faster R-CNN box head whose box count is baked by `int(...)` during tracing.

torchvision's BoxCoder.decode computes `box_sum` from per-image box counts and reshapes the regression output
with it; once the count goes through Python, the TorchScript exporter writes the export-time count (14) into the
Reshape's shape, and onnxruntime fails for any other number of proposals (vision #4623, #8534).

    python make_model.py            # writes model.onnx next to this file
"""

from pathlib import Path

import torch
from torch import nn


class BoxHead(nn.Module):
    def __init__(self, in_features: int = 16, num_classes: int = 3):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)

    def forward(self, box_features, proposals):
        box_sum = int(proposals.shape[0])  # the bug: a traced size turned into a Python int
        scores = self.cls_score(box_features).softmax(-1)
        deltas = self.bbox_pred(box_features).reshape(box_sum, -1, 4)
        boxes = proposals[:, None, :] + deltas
        return scores, boxes


def export(path: Path, num_boxes: int = 14, opset: int = 17) -> None:
    torch.manual_seed(0)
    model = BoxHead().eval()
    args = (torch.randn(num_boxes, 16), torch.randn(num_boxes, 4))
    torch.onnx.export(model, args, str(path), input_names=["box_features", "proposals"],
                      output_names=["scores", "boxes"], opset_version=opset, dynamo=False,
                      dynamic_axes={"box_features": {0: "N"}, "proposals": {0: "N"}})


if __name__ == "__main__":
    export(Path(__file__).with_name("model.onnx"))
