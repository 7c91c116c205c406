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
    """Whisper's pad-or-trim to 16 frames, then a Linear; 8 learned queries put before the frames, whose 8 outputs
    are kept; and a pad by the Python int of the length, then a crop to it (helper 137). Exported at the crop's
    own number (16, 8, 13), the three leave one graph: a pad or prefix as long as the export length, then a crop
    to it. The first two are healthy, the third wrong at every other length (13 frames out at 20). The graph does
    not say which: refused, as a model's own first N frames exported at N are; the message says to export at
    another length, where the healthy ones have no finding (helper 136's first attack had them exit 0, and the
    baked one with them)."""

    def __init__(self, mode):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.mode = torch.nn.Linear(8, 8), mode
        self.queries = torch.nn.Parameter(torch.randn(1, 8, 8))

    def forward(self, x):
        if self.mode == "prefix-queries":
            return self.lin(torch.cat([self.queries.expand(x.shape[0], -1, -1), x], 1))[:, :8]
        keep = 16 if self.mode == "pad-or-trim" else int(x.shape[1])
        return self.lin(torch.nn.functional.pad(x, (0, 0, 0, keep))[:, :keep])


@pytest.mark.parametrize(("mode", "length"), [("pad-or-trim", 16), ("prefix-queries", 8), ("baked", 13)])
def test_a_crop_to_what_was_put_before_or_after_at_its_length_is_refused(tmp_path, mode, length):
    path, out = _export(tmp_path, PadOrTrim(mode), length), tmp_path / "fixed.onnx"
    refused = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), "--trace-shape", f"x=2x{length}x8"])
    assert refused.exit_code == 1 and not out.exists() and "error GF007" in refused.output, refused.output
    assert "Re-export at another length" in refused.output


@pytest.mark.parametrize("mode", ["pad-or-trim", "prefix-queries"])
def test_exported_at_another_length_the_own_crop_has_no_finding(tmp_path, mode):
    path, out = _export(tmp_path, PadOrTrim(mode), 11), tmp_path / "fixed.onnx"
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out), "--trace-shape", "x=2x11x8"])
    assert done.exit_code == 0 and "GF007" not in done.output, done.output
