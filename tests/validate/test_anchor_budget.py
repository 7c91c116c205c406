"""Anchoring the probe (graphfix.validate.anchor) stops growing before its runs would pass GROW_BUDGET_S.
transformers' MobileViT, exported with TorchScript at 64x64, bakes its patch counts and fails at every other
size. The guessed first size (97x98) fails; doubling it never reaches a size the model runs at, and each doubling
made the runs four times longer: `diagnose` spent over a minute on 1552x1568 images, then blamed the run budget
(GF000 "stopped after 10 s") instead of the Reshape. Now it names the Reshape."""

from __future__ import annotations

import warnings

import pytest

import graphfix


def test_a_model_that_fails_at_every_size_is_blamed_on_its_reshape_not_on_time(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from fixtures.library_models import import_transformers

    transformers = import_transformers()

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            config = transformers.MobileViTConfig(image_size=64, patch_size=2, hidden_sizes=[16, 24, 32],
                                                  neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48],
                                                  num_attention_heads=2)
            self.model = transformers.MobileViTModel(config)

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).pooler_output

    torch.manual_seed(0)
    path = tmp_path / "mobilevit.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Pooled().eval(), (torch.randn(2, 3, 64, 64),), str(path), dynamo=False,
                          opset_version=17, input_names=["pixel_values"], output_names=["pooled"],
                          dynamic_axes={"pixel_values": {0: "batch", 2: "height", 3: "width"},
                                        "pooled": {0: "batch"}})
    errors = [f for f in graphfix.diagnose(str(path)) if f.severity.value == "error"]
    assert errors and all("run budget" not in f.message for f in errors), [f.message[:200] for f in errors]
    assert any(f.rule == "GF004" and "Reshape" in f.message for f in errors), [f.message[:200] for f in errors]


def chain():
    """16 MatMuls of [N, 512] by a 512x512 weight: 4 GFLOP each at N = 8192, microseconds at N = 2."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from graphfix.validate.runner import ModelRunner

    weight = onnx.numpy_helper.from_array(np.full((512, 512), 1e-3, np.float32), "w")
    nodes = [helper.make_node("MatMul", [f"h{k}", "w"], [f"h{k + 1}"]) for k in range(16)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["N", 512])],
                              [helper.make_tensor_value_info("h16", TensorProto.FLOAT, ["N", 512])], [weight])
    return ModelRunner(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_run_past_its_own_budget_fails_alone_and_the_runner_goes_on():
    """The probe's growth gives each grown run what is left of its budget: running past it stops that run, and the
    runner's later runs (the probe itself, at smaller sizes) still run, where a run past the run budget would end
    them all. A busy machine slowed a grown MobileViT run past 10 s: the test above then blamed time."""
    import numpy as np

    runner = chain()
    slow = runner.run({"h0": np.ones((8192, 512), np.float32)}, budget_s=0.001)  # 16 MatMuls of 4 GFLOP each
    assert not slow.ok and "own budget" in slow.error, slow.error
    assert not runner.timed_out
    small = runner.run({"h0": np.ones((2, 512), np.float32)})
    assert small.ok and small.outputs["h16"].shape == (2, 512)


def test_a_run_budget_below_a_runs_own_is_still_the_bound(monkeypatch):
    """A user's GRAPHFIX_MAX_RUN_SECONDS below what a grown run would get: the run budget is the bound, and running
    past it ends the runner's runs as it always did."""
    import numpy as np

    monkeypatch.setenv("GRAPHFIX_MAX_RUN_SECONDS", "0.001")
    runner = chain()
    slow = runner.run({"h0": np.ones((8192, 512), np.float32)}, budget_s=0.5)
    assert not slow.ok and "GRAPHFIX_MAX_RUN_SECONDS" in slow.error and runner.timed_out, slow.error
