"""Input dims the graph ties to each other are probed together (#22 item 1): a healthy model gets no error and
`repair` exits 0, and `diagnose` probes the sizes `repair`'s proof does. A low-frame-rate stacking (FireRedASR's and
Paraformer's LFR: three feature frames to one), a Reshape that groups U frames in threes beside a T-frame input,
ties T = U / 3, met at every third U only: the search for a valid U doubled from 13, which never meets a multiple
of 3, and the healthy model failed `diagnose` (GF004) and `repair` (exit 1).

Not tied: a dim an integer Div of sizes divides (`H // K` heads). A first version tied H to multiples of K, and
helper 65 showed why not: a model that handles the remainder but bakes `int(H % K)` was never probed where it
fails (written unchanged, exit 0, "validation: passed"), and a healthy model chunking T by C was probed past its
position table. So grouped-query attention through transformers' `repeat_kv` with both head counts dynamic is
still probed at H < K, where PyTorch fails too (a strict xfail below).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import assert_left_alone

from graphfix.analysis.sizes import bind, tied_dims
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


def remainder_baked(path):
    """Groups of K heads out of H, the remainder handled, but its count baked (`int(H % K)`, 0 at H = 12, K = 4):
    onnxruntime fails wherever K does not divide H, PyTorch runs everywhere (helper 65)."""
    class Grouped(torch.nn.Module):
        def forward(self, x, kv):
            batch, heads, groups, dim = x.shape[0], x.shape[1], kv.shape[1], x.shape[2]
            per = heads // groups
            head = x[:, : per * groups].reshape(batch, per, groups, dim) * kv.unsqueeze(1)
            rest = int(x.shape[1] % kv.shape[1])
            return head.sum((1, 2)) + x[:, per * groups:].reshape(batch, rest * dim).sum(-1, keepdim=True)

    torch.manual_seed(0)
    return Grouped(), _export(Grouped(), (torch.randn(2, 12, 8), torch.randn(2, 4, 8)), path, ["x", "kv", "y"],
                              {"x": {0: "B", 1: "H"}, "kv": {0: "B", 1: "K"}, "y": {0: "B"}})


def chunked_with_positions(path):
    """Healthy: chunks of C frames out of T (`T // C`, the remainder dropped) beside a 64-row position table."""
    class Chunked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = torch.nn.Parameter(torch.randn(64, 4))

        def forward(self, x, c):
            batch, length, chunk, dim = x.shape[0], x.shape[1], c.shape[1], x.shape[2]
            h = x + self.pos[:length]
            return h[:, : (length // chunk) * chunk].reshape(batch, -1, chunk, dim).mean(2).sum(1) + c.mean(1)

    torch.manual_seed(0)
    return Chunked(), _export(Chunked(), (torch.randn(2, 32, 4), torch.randn(2, 8, 4)), path, ["x", "c", "out"],
                              {"x": {0: "B", 1: "T"}, "c": {0: "B", 1: "C"}, "out": {0: "B"}})


GQA_XFAIL = pytest.mark.xfail(strict=True, reason="H // K is no tie (the model may handle the remainder): the probe "
                                                  "tries H < K, where repeat_kv fails in PyTorch as in onnxruntime")
MODELS = {"low-frame-rate": low_frame_rate, "chunked-with-positions": chunked_with_positions,
          "gqa-repeat-kv": grouped_query_attention}
INPUTS = {"gqa-repeat-kv": (("q", "B", "H", "T", 8), ("k", "B", "K", "T", 8), ("v", "B", "K", "T", 8)),
          "low-frame-rate": (("x", "B", "T", 4), ("feats", "B", "U", 4)),
          "chunked-with-positions": (("x", "B", "T", 4), ("c", "B", "C", 4))}


@pytest.mark.parametrize("name", [pytest.param(n, marks=GQA_XFAIL) if n == "gqa-repeat-kv" else n for n in MODELS])
def test_a_healthy_model_with_tied_input_dims_is_probed_inside_its_domain(name, tmp_path):
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
        with torch.no_grad():
            expected = module(*(torch.from_numpy(feeds[spec[0]]) for spec in INPUTS[name])).numpy()
        np.testing.assert_allclose(session.run(None, feeds)[0], expected, rtol=1e-4, atol=1e-5)
    assert_left_alone(path, tmp_path / "out.onnx")


def test_a_model_that_fails_off_the_multiples_of_a_division_is_probed_there(tmp_path):
    """The trap of a Div taken for a tie: `diagnose` finds the failure where K does not divide H, and `repair`
    writes nothing with exit 0."""
    _, path = remainder_baked(tmp_path / "grouped.onnx")
    sizes = probe_sizes(onnx.load(str(path)), ValidationOptions())
    assert any(binding["H"] % binding["K"] for binding in sizes), sizes
    runner = CliRunner()
    assert runner.invoke(cli, ["diagnose", str(path)]).exit_code == 1
    out = tmp_path / "out.onnx"
    repaired = runner.invoke(cli, ["repair", str(path), "-o", str(out)])
    assert repaired.exit_code == 1, repaired.output


def test_a_tie_met_at_every_third_size_is_found_near_the_probe():
    import sympy

    frames = sympy.Symbol("U", positive=True, integer=True)
    assert bind({"U": 13, "T": 12}, {"T": frames / 3}) == {"U": 15, "T": 5}
    assert tied_dims(onnx.parser.parse_model("""< ir_version: 8, opset_import: ["" : 17] >
        g (float[B, T, 4] x, float[B, U, 4] y) => (float[B, T, 4] z) {
            s = Constant<value = int64[4] {0, -1, 3, 4}>()
            r = Reshape(y, s)
            m = ReduceMean<axes = [2], keepdims = 0>(r)
            z = Add(m, x)
        }""")).keys() == {"T"}
