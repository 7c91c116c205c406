"""Input dims the graph ties to each other are probed together (#22 item 1): a healthy model gets no error and
`repair` exits 0. Before, each dim was probed apart, and two healthy models failed where PyTorch fails too:

- grouped-query attention through transformers' own `repeat_kv` (Llama, Mistral, Qwen), with the query and key-value
  head counts both dynamic: `H // K` heads per group at H = 12, K = 14 is 0, and `diagnose` reported two GF004
  errors while `repair` exited 1 (helper 57's finding 3). An integer Div of two sizes now ties H to a multiple of K;
- low-frame-rate stacking (FireRedASR's and Paraformer's LFR: three feature frames to one), a Reshape that groups U
  frames in threes beside a T-frame input: T = U / 3 holds at every third U only, and the search for a valid U
  doubled from 13, which never meets a multiple of 3.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from graphfix.analysis.sizes import bind, tied_dims
from graphfix.analysis.sizes.solve import multiple_of
from graphfix.cli import cli
from graphfix.validate import ValidationOptions, probe_sizes

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch]


def _export(module, example, path, names, axes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, opset_version=17,
                          input_names=names[:-1], output_names=names[-1:], dynamic_axes=axes)
    return path


def grouped_query_attention(path):
    from fixtures.library_models import import_transformers

    repeat_kv = import_transformers().models.llama.modeling_llama.repeat_kv

    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            groups = q.shape[1] // k.shape[1]
            k, v = repeat_kv(k, groups), repeat_kv(v, groups)
            return torch.softmax(q @ k.transpose(2, 3) / 8 ** 0.5, -1) @ v

    torch.manual_seed(0)
    example = (torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8))
    axes = {"q": {0: "B", 1: "H", 2: "T"}, "k": {0: "B", 1: "K", 2: "T"}, "v": {0: "B", 1: "K", 2: "T"}}
    return Attention(), _export(Attention(), example, path, ["q", "k", "v", "o"], axes)


def low_frame_rate(path):
    class Stacked(torch.nn.Module):
        """Three 4-dim feature frames per encoder frame, added to a T-frame input."""

        def forward(self, x, feats):
            batch, _, dim = x.shape
            return feats.reshape(batch, -1, 3, dim).mean(2) + x

    torch.manual_seed(0)
    example = (torch.randn(2, 5, 4), torch.randn(2, 15, 4))
    return Stacked(), _export(Stacked(), example, path, ["x", "feats", "o"],
                              {"x": {0: "B", 1: "T"}, "feats": {0: "B", 1: "U"}})


MODELS = {"gqa-repeat-kv": grouped_query_attention, "low-frame-rate": low_frame_rate}
INPUTS = {"gqa-repeat-kv": (("q", "B", "H", "T", 8), ("k", "B", "K", "T", 8), ("v", "B", "K", "T", 8)),
          "low-frame-rate": (("x", "B", "T", 4), ("feats", "B", "U", 4))}


@pytest.mark.parametrize("name", MODELS)
def test_a_healthy_model_with_tied_input_dims_is_probed_with_them_tied(name, tmp_path):
    module, path = MODELS[name](tmp_path / f"{name}.onnx")
    model = onnx.load(str(path))
    sizes = probe_sizes(model, ValidationOptions())
    assert len(sizes) >= 3, sizes
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for binding in sizes:  # inside the model's domain: PyTorch runs there, and onnxruntime agrees with it
        feeds = {spec[0]: rng.standard_normal([binding.get(d, d) for d in spec[1:]]).astype(np.float32)
                 for spec in INPUTS[name]}
        expected = module(*(torch.from_numpy(feeds[spec[0]]) for spec in INPUTS[name])).numpy()
        np.testing.assert_allclose(session.run(None, feeds)[0], expected, rtol=1e-4, atol=1e-5)
    runner = CliRunner()
    diagnosed = runner.invoke(cli, ["diagnose", str(path)])
    assert diagnosed.exit_code == 0 and "error" not in diagnosed.output, diagnosed.output
    repaired = runner.invoke(cli, ["repair", str(path), "-o", str(tmp_path / "out.onnx")])
    assert repaired.exit_code == 0 and "unchanged" in repaired.output and "FAILS" not in repaired.output, \
        repaired.output


def test_query_heads_are_probed_at_several_groups_per_key_value_head(tmp_path):
    """Each binding a multiple, and not always twice: a repair that kept the export's `H // K` would pass a proof
    whose every binding had the same ratio."""
    _, path = grouped_query_attention(tmp_path / "gqa.onnx")
    sizes = probe_sizes(onnx.load(str(path)), ValidationOptions())
    assert all(binding["H"] % binding["K"] == 0 for binding in sizes), sizes
    assert len({binding["H"] // binding["K"] for binding in sizes}) >= 2, sizes


def test_a_binding_that_meets_the_multiple_is_kept_and_one_that_does_not_is_moved():
    import sympy

    heads, groups = sympy.symbols("H K", positive=True, integer=True)
    tied = {"H": multiple_of(heads, groups)}
    assert bind({"H": 8, "K": 2}, tied) == {"H": 8, "K": 2}  # an export size stays as it was traced
    assert bind({"H": 3, "K": 5}, tied) == {"H": 15, "K": 5}
    assert bind({"H": 40, "K": 7}, tied) == {"H": 56, "K": 7}  # at most 8 groups


def test_a_tie_met_at_every_third_size_is_found_near_the_probe():
    import sympy

    frames = sympy.Symbol("U", positive=True, integer=True)
    assert bind({"U": 13, "T": 12}, {"T": frames / 3}) == {"U": 15, "T": 5}


def test_an_integer_div_of_sizes_ties_its_dividend_to_a_multiple_of_its_divisor(tmp_path):
    _, path = grouped_query_attention(tmp_path / "gqa.onnx")
    tied = tied_dims(onnx.load(str(path)))
    assert set(tied) == {"H"} and {s.name for s in tied["H"].free_symbols} == {"H", "K"}, tied
