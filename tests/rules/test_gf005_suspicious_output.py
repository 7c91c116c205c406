"""GF005's probe hook (`Rule.suspect_outputs`): which outputs of the probe's clean runs are unusable, and the probe
reporting them as GF005 warnings."""

import numpy as np
import onnx.parser

from graphfix.core.registry import load_rules
from graphfix.core.rule import Severity
from graphfix.validate import ValidationOptions, probe


def gf005():
    return next(rule for rule in load_rules()[0] if rule.code == "GF005")


def test_nan_at_one_size_and_empty_at_every_size_are_suspect():
    runs = [{"logits": np.array([0.5, np.nan]), "boxes": np.zeros((0, 4)), "ids": np.array([1, 2])},
            {"logits": np.array([0.5, 1.0]), "boxes": np.zeros((0, 4)), "ids": np.array([3])}]
    assert dict(gf005().suspect_outputs(runs)).keys() == {"logits", "boxes"}


def test_an_output_empty_at_one_size_only_is_not_suspect():
    runs = [{"boxes": np.zeros((0, 4), np.float32)}, {"boxes": np.ones((2, 4), np.float32)}]
    assert list(gf005().suspect_outputs(runs)) == []


def test_the_probe_reports_the_hooks_outputs_as_warnings():
    model = onnx.parser.parse_model('''<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) { z = Sub(x, x)  y = Div(z, z) }''')  # 0 / 0 everywhere: NaN
    failures = probe(model, ValidationOptions())
    (found,) = [f for f in failures if f.rule == "GF005"]
    assert found.severity is Severity.WARNING and found.tensors == ["y"] and "NaN or Inf" in found.message
