"""GF007 on a crop back to the input's length after a pad to a multiple (helper 133): `F.pad(x, (0, 0, 0, int(T) %
8 ...))` then `h[:, :int(T)]`, traced at 13 frames, cuts the `T + 3` frames at 13, the given export size of T.
With `--trace-shape` the crop was no finding (it compared the end with the padded length only, 16) and `repair`
wrote the model unchanged with exit 0: 13 frames out at every length. It is the export-length cut of an axis that
grows with T: an error where the export's sizes are given, not repaired (a model's own 13 of a padded axis, exported
at 13, leaves the same graph). A crop to a number no input size had at export is left alone."""

from __future__ import annotations

import warnings

import pytest
from click.testing import CliRunner

from graphfix.cli import cli

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class PadCrop(torch.nn.Module):
    def __init__(self, crop=None):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.crop = torch.nn.Linear(8, 8), crop

    def forward(self, x):
        length = int(x.shape[1])
        padded = torch.nn.functional.pad(x, (0, 0, 0, (length + 7) // 8 * 8 - length))
        return self.lin(padded)[:, : self.crop or length]


def _export(tmp_path, module, length):
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, length, 8),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B", 1: "T"}})
    return path


def test_a_crop_to_the_given_length_is_an_error(tmp_path):
    path, out = _export(tmp_path, PadCrop(), 13), tmp_path / "fixed.onnx"
    found = CliRunner().invoke(cli, ["diagnose", str(path), "--trace-shape", "x=2x13x8"])
    assert found.exit_code == 1 and "error GF007" in found.output and "export size of T" in found.output, \
        found.output
    refused = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), "--trace-shape", "x=2x13x8"])
    assert refused.exit_code == 1 and not out.exists(), refused.output


def test_a_crop_to_no_input_size_is_left_alone(tmp_path):
    found = CliRunner().invoke(cli, ["diagnose", str(_export(tmp_path, PadCrop(crop=12), 13)),
                                     "--trace-shape", "x=2x13x8"])
    assert "GF007" not in found.output, found.output


class PadOrTrim(torch.nn.Module):
    """Whisper's pad-or-trim to 16 frames, then a Linear; and 8 learned queries put before the frames, whose 8
    outputs are kept (helper 136): healthy at every length, exported at T = 16 and T = 8, the crop's own number.
    The rest of the length (`T + 16`, `T + 8`) is the end: the model's own crop."""

    def __init__(self, queries=0):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.queries = torch.nn.Linear(8, 8), torch.nn.Parameter(torch.randn(1, queries, 8))

    def forward(self, x):
        keep = self.queries.shape[1]
        if keep:
            return self.lin(torch.cat([self.queries.expand(x.shape[0], -1, -1), x], 1))[:, :keep]
        return self.lin(torch.nn.functional.pad(x, (0, 0, 0, 16))[:, :16])


@pytest.mark.parametrize(("module", "length"), [(PadOrTrim(), 16), (PadOrTrim(queries=8), 8)],
                         ids=["pad-or-trim", "prefix-queries"])
def test_a_crop_to_what_was_put_before_or_after_is_the_models_own(tmp_path, module, length):
    path, out = _export(tmp_path, module, length), tmp_path / "fixed.onnx"
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), "--trace-shape", f"x=2x{length}x8"])
    assert done.exit_code == 0 and "GF007" not in done.output, done.output
