"""GF005 suspicious-output."""

from __future__ import annotations

from graphfix.core.rule import Rule, Severity


class SuspiciousOutput(Rule):
    """Outputs that contain NaN or Inf, or are empty at every probe size.

    ## What it does
    Reported by the runtime probe (`graphfix diagnose` without `--static`, `graphfix check`): after a clean run at
    every probe size, an output holding NaN or Inf, or with zero elements at every size, is flagged with its
    likely cause. It has no static detection.

    ## Why it breaks deployment
    The model runs, so nothing fails, but what it returns is unusable. The torchvision Faster R-CNN field report
    returned empty predictions for every image: the model expected pixels in [0, 1] and was fed [0, 255].
    NaN/Inf usually come from an input range or normalisation the model was not trained on, or from a division
    by a size that is 0 at some input length.

    ## Example
    `boxes: shape [0, 4]` at every size, or `logits` with NaN at batch 1: check `image = image.float() / 255.0`
    and the normalisation used in training.

    ## Fix safety
    Not fixable in the graph: the preprocessing around the model is what needs to change. Give realistic values
    with `--input NAME=file.npy` to confirm.
    """

    code = "GF005"
    name = "suspicious-output"
    severity = Severity.WARNING
    runtime_hint = "Check the input range and preprocessing (e.g. images in [0, 1] vs [0, 255], normalisation)."
    runtime_only = True
