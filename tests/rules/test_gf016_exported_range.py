"""GF016 exported-range: what torch.export recorded of the sizes it traced a dynamo export for.

Helper 153: under `Dim.AUTO` (the dynamic shapes most users write) torch.export fixes a dim the model reads through
Python, `int(x.shape[1])`, while the ONNX inputs still declare it dynamic. Ten such exports ran wrong at other
lengths with no finding, and `repair` compared each with itself and wrote it with exit 0. The exporter's record
(`s27: VR[16, 16]`) says so: an error, nothing written. A least size it guarded (`if x.shape[1] >= 14:`) is where
the graph holds: probed from there, a warning where no window of the graph explains it.
"""

from __future__ import annotations

import warnings

import onnx
import pytest
from click.testing import CliRunner
from conftest import agrees_with_module

from graphfix.cli import cli
from graphfix.io.torch_ranges import RANGES, exported_ranges
from graphfix.validate import ValidationOptions, probe_sizes

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch]
SIZES = [(1, 12), (3, 24), (2, 40)]  # batch 1, shorter and longer than the export's 16


class Traced(torch.nn.Module):
    """A size read through Python, then used as helper 153's reproducers do."""

    def __init__(self, use: str):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.use = torch.nn.Linear(8, 8), use

    def forward(self, x):
        h, length = self.lin(x), int(x.shape[1])
        if self.use == "view":
            return h.view(x.shape[0], length // 2, -1)
        if self.use == "interpolate":
            return torch.nn.functional.interpolate(h.transpose(1, 2), size=length * 2, mode="linear")
        return h[:, length - 1]  # the last frame


class Branch(torch.nn.Module):
    """One path from 14 frames, another below: torch.export keeps the first under `T >= 14`."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(12, 8))

    def forward(self, x):
        if x.shape[1] >= 14:
            return (x[:, 2:14] * self.w).sum(1)
        return x.mean(1)


class Strided(torch.nn.Module):
    """A kernel-16 Conv1d: torch.export guards T >= 16, which the Conv explains (PyTorch fails below too)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(8, 8, 16, stride=4)

    def forward(self, x):
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


def _export(module, path, dims):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, 16, 8),), str(path), dynamo=True, input_names=["x"],
                          output_names=["y"], dynamic_shapes={"x": dims})
    return path


def _matches(module, path, sizes) -> bool:
    return agrees_with_module(path, module, [(batch, length, 8) for batch, length in sizes])


@pytest.mark.parametrize("use", ["view", "interpolate", "last"])
def test_a_size_torch_export_fixed_under_dim_auto_is_an_error_and_nothing_is_written(use, tmp_path):
    module = Traced(use)
    path = _export(module, tmp_path / "m.onnx", {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO})
    declared = [d.dim_param for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[:2]]
    assert all(declared) and not _matches(module, path, SIZES)  # declared dynamic, and wrong elsewhere
    runner = CliRunner()
    diagnosed = runner.invoke(cli, ["diagnose", str(path)])
    assert diagnosed.exit_code == 1 and "error GF016" in diagnosed.output and "= 16 only" in diagnosed.output, \
        diagnosed.output
    out = tmp_path / "out.onnx"
    refused = runner.invoke(cli, ["repair", str(path), "-o", str(out)])
    assert refused.exit_code == 1 and not out.exists(), refused.output


def test_a_least_size_torch_export_guarded_is_probed_from_and_named(tmp_path):
    """Helper 152's branch: the graph is the module from 14 frames on (torch.export's record), and takes no other
    path below. Probed from 14, written with a warning that names the bound; below it the ONNX differs, as the
    warning says."""
    module = Branch()
    path = _export(module, tmp_path / "m.onnx", {0: torch.export.Dim("B"), 1: torch.export.Dim("T")})
    model = onnx.load(str(path))
    assert exported_ranges(model)["T"] == (14, None)
    assert min(binding["T"] for binding in probe_sizes(model, ValidationOptions())) == 14
    out = tmp_path / "out.onnx"
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(out)])
    assert done.exit_code == 0 and "warning GF016" in done.output and "T >= 14" in done.output, done.output
    assert _matches(module, out, [(1, 14), (3, 24), (2, 40)]) and not _matches(module, out, [(1, 12)])


def test_a_least_size_a_conv_explains_is_no_finding(tmp_path):
    path = _export(Strided(), tmp_path / "m.onnx", {0: torch.export.Dim("B"), 1: torch.export.Dim("T")})
    assert exported_ranges(onnx.load(str(path)))["T"] == (16, None)
    done = CliRunner().invoke(cli, ["diagnose", str(path)])
    assert done.exit_code == 0 and "no findings" in done.output, done.output


def test_a_split_into_a_sequence_is_probed_not_a_crash(tmp_path):
    """`x.split(4, 1)` exports as SplitToSequence: the probe read a sequence's shape with numpy, and `diagnose`
    stopped with an internal error (helper 153)."""

    class Chunks(torch.nn.Module):
        def forward(self, x):
            parts = x.split(4, dim=1)
            return parts[0].mean(1) + parts[1].mean(1)

    path = _export(Chunks(), tmp_path / "m.onnx", {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC})
    done = CliRunner().invoke(cli, ["diagnose", str(path)])
    assert done.exit_code == 0 and "internal error" not in done.output, done.output


def _recorded(text: str, *dims: list) -> onnx.ModelProto:
    graph = onnx.helper.make_graph([], "g", [onnx.helper.make_tensor_value_info(f"i{k}", onnx.TensorProto.FLOAT, d)
                                             for k, d in enumerate(dims)], [])
    graph.metadata_props.add(key=RANGES, value=text)
    return onnx.helper.make_model(graph)


def test_the_record_is_matched_to_the_inputs_by_name_or_one_for_one_else_not_read():
    record = "{s77: VR[0, int_oo], s27: VR[14, int_oo], u0: VR[0, 9]}"  # u0: a value's size, no input's
    assert exported_ranges(_recorded(record, ["s77", "s27"])) == {"s77": (0, None), "s27": (14, None)}
    assert exported_ranges(_recorded(record, ["B", "T"], ["B"])) == {"B": (0, None), "T": (14, None)}
    assert exported_ranges(_recorded(record, ["B", "T", "C"])) == {}  # three names, two symbols: not matched
    # `{0: Dim("B"), 1: Dim.AUTO}`: torch's name kept for one, the other renamed (helper 154: the record was dropped)
    assert exported_ranges(_recorded(record, ["B", "s27"])) == {"B": (0, None), "s27": (14, None)}
    derived = "{s17: VR[0, int_oo], s27: VR[16, 16], 2*s27: VR[32, 32]}"  # `y` of length 2 T
    assert exported_ranges(_recorded(derived, ["s17", "s27"], ["s17", "2*s27"]))["s27"] == (16, 16)
    # renamed, and a derived entry among those left (two batches torch kept apart under one name): not paired
    assert exported_ranges(_recorded("{s77: VR[0, int_oo], s27: VR[14, int_oo], s17: VR[0, int_oo], 2*s27: "
                                     "VR[28, int_oo]}", ["B", "T"], ["B", "S"])) == {}
    hostile = "{s1: VR[2, __import__('os').system('x')], s2: VR[3, 5]}"
    assert exported_ranges(_recorded(hostile, ["A"])) == {"A": (3, 5)}  # a pattern reads it, nothing runs
    assert exported_ranges(_recorded("{s1: VR[99999999999999, int_oo]}", ["T"])) == {}  # no probe that long
    # `Dim("h")` declared `2 * h` (test_chunked_lengths.py): the inputs' `2*h` pairs with none of torch's symbols
    doubled = "{2*s39: VR[2, 512], 2*s94: VR[2, 512], s94: VR[2, 256], s39: VR[2, 256]}"
    assert exported_ranges(_recorded(doubled, [1, 3, "2*h", "2*w"])) == {}


def test_a_dim_fixed_beside_a_named_batch_is_found(tmp_path):
    """`{0: Dim("B"), 1: Dim.AUTO}`: the exporter renames the batch only; the record was dropped (helper 154)."""
    module = Traced("view")
    path = _export(module, tmp_path / "m.onnx", {0: torch.export.Dim("B"), 1: torch.export.Dim.AUTO})
    assert not _matches(module, path, SIZES)
    done = CliRunner().invoke(cli, ["repair", str(path), "-o", str(tmp_path / "out.onnx")])
    assert done.exit_code == 1 and "error GF016" in done.output, done.output
