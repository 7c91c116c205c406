"""GF005 suspicious-output."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

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

    @classmethod
    def suspect_outputs(cls, runs: Sequence[Mapping[str, np.ndarray]]) -> Iterator[tuple[str, str]]:
        """Outputs with NaN or Inf at some probe size, or empty at every one."""
        for name in runs[0] if runs else ():
            values = [run[name] for run in runs if name in run]
            if any(_non_finite(v) for v in values):
                yield name, (f"output '{name}' contains NaN or Inf on synthetic inputs (standard normal floats, ids "
                             "within their table)")
            elif all(np.size(v) == 0 for v in values):
                yield name, f"output '{name}' is empty (0 elements) at every probe size"


def _non_finite(value: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(value).dtype, np.floating) and not np.isfinite(value).all()
