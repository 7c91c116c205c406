"""The repaired model's output declarations and the proof's shape oracle read one symbolic shape inference of the
repaired graph (#23, analysis once): declaring the followed outputs infers it, and the oracle, which checks the
repaired model's outputs where the original cannot be a reference, takes those shapes instead of inferring the
same graph again (on the padded BERT-base 0.08 s of its repair). The declarations are no input to that inference,
so the shapes are the ones the oracle would infer from the renamed model itself."""

from __future__ import annotations

from pathlib import Path

import graphfix.analysis.shapes as shapes
from graphfix.core.registry import select_rules
from graphfix.io.loading import load_model
from graphfix.pipeline.followed_outputs import declare_followed_outputs
from graphfix.pipeline.repair import RepairOptions, repair_model
from graphfix.validate import ValidationOptions
from graphfix.validate.compare import ShapeOracle

HUBERT = Path(__file__).resolve().parents[2] / "samples" / "hubert_padding_mask" / "model.onnx"
OPTIONS = RepairOptions(rules=select_rules((), ()), validation=ValidationOptions())


def test_the_declared_shapes_are_what_the_renamed_model_infers(tmp_path):
    result = repair_model(load_model(HUBERT), tmp_path / "fixed.onnx", OPTIONS)
    assert result.status == "repaired", result.error
    repaired = result.light
    declared = declare_followed_outputs(repaired, {"batch": 2, "time": 3})
    assert declared.shapes is not None
    assert declared.shapes == ShapeOracle(declared.model).expected


def test_the_proof_infers_the_repaired_graph_once(tmp_path, monkeypatch):
    """Where the original fails (HuBERT's mask at batch 2), the oracle checks the repaired model's shapes; the
    repaired graph is inferred once, for its declarations (the original's echo check infers the original)."""
    inferred = []
    real = shapes.symbolic_inference

    def counted(model, **kwargs):
        inferred.append(len(model.graph.node))
        return real(model, **kwargs)

    monkeypatch.setattr(shapes, "symbolic_inference", counted)
    loaded = load_model(HUBERT)
    original = len(loaded.proto.graph.node)
    result = repair_model(loaded, tmp_path / "fixed.onnx", OPTIONS)
    assert result.status == "repaired", result.error
    assert any(not run["original"]["ok"] for run in result.validation["runs"])
    assert len([n for n in inferred if n != original]) == 1, inferred
