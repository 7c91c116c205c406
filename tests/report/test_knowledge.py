"""`graphfix explain MESSAGE` answers every error string of the field reports, and admits what it does not know."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from graphfix.cli import cli
from graphfix.report.knowledge import explain_message

# (message as users saw it, rule expected in the explanation or None, a word the explanation must contain)
FIELD_ERRORS = [
    ("Non-zero status code returned while running Add node. Name:'/Add_3' Status Message: Attempting to broadcast "
     "an axis by a dimension other than 1. 211 by 421", "GF003", "constant"),
    ("Non-zero status code returned while running Where node. Name:'/Where' Status Message: Where node condition "
     "operand cannot broadcast on dim 1 Condition Shape: {1,100}, X Shape: {}, Y Shape: {1,100,768}", "GF003",
     "masked_fill"),
    ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Reshape node. "
     "Name:'/roi_heads/Reshape_2' Status Message: The input tensor cannot be reshaped to the requested shape. "
     "Input shape:{14,7}, requested shape:{-1,4}", "GF004", "int(x.shape[1])"),
    ("Split node. Name:'/Split' Status Message: Cannot split using values in 'split' attribute", "GF004", "lists"),
    ("MatMul dimension mismatch", "GF004", "Reshape"),
    ("Status Message: left operand cannot broadcast on dim 0", "GF004", "MatMul"),
    ("AttributeError: 'Tensor' object has no attribute 'is_integer'", "GF004", "pad_to_multiple"),
    ("TracerWarning: Converting a tensor to a Python integer might cause the trace to be incorrect.", "GF006",
     "constant"),
    ("TracerWarning: Converting a tensor to a Python boolean might cause the trace to be incorrect.", "GF006",
     "constant"),
    ("Concat node. Name:'/Concat_5' Status Message: concat.cc:154 PrepareForCompute Non concat axis dimensions "
     "must match: Axis 1 has mismatched dimensions of 3 and 2", "GF002", "repeat_interleave"),
    ("[W:onnxruntime:, graph.cc:3490 CleanUnusedInitializersAndNodeArgs] Can't constant fold SequenceEmpty node",
     "GF002", "SequenceInsert"),
    ("Exporting the operator repeat_interleave to ONNX opset version 9 is not supported", "GF002", "opset"),
    ("torch.onnx.errors.UnsupportedOperatorError: Exporting the operator 'aten::repeat_interleave' to ONNX opset "
     "version 11 is not supported", "GF002", "opset"),
    ("RuntimeError: Exceeded maximum protobuf size of 2GB: 2457600000", None, "external data"),
    ("ValueError: The serialized model is larger than the 2GiB limit imposed by the protobuf library.", None,
     "external data"),
    ("External initializer: onnx::MatMul_1 offset: 0 size to read: 11534336 given file_length: 4194304 are out of "
     "bounds or can not be read in full.", "GF001", "truncated"),
    ("Data of TensorProto ( tensor name: W) should be stored in model.onnx.data, but it doesn't exist or is not "
     "accessible.", "GF001", "missing"),
    ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Invalid Feed Input Name:cnn_cache", "GF001", "pruned"),
    ("ValueError: too many values to unpack (expected 2)", None, "cache"),
    ("ValueError: not enough values to unpack (expected 2, got 0)", None, "cache"),
    ("NotImplementedError: firedasr not support streaming pos encding", None, "graphfix extract"),
    ("reshape wildcard -1 has infinite number of solutions or no solution. Reshaping [0,364] to [0,-1]", "GF004",
     "-1"),
    ("google.protobuf.message.DecodeError: Error parsing message with type 'onnx.ModelProto'", None, "LFS"),
]


@pytest.mark.parametrize("message, rule, word", FIELD_ERRORS, ids=[m[:40] for m, _, _ in FIELD_ERRORS])
def test_every_field_error_is_explained(message, rule, word):
    known = explain_message(message)
    assert known is not None
    assert known.rule == rule
    assert word.lower() in known.explain().lower()
    result = CliRunner().invoke(cli, ["explain", message])
    assert result.exit_code == 0 and known.title in result.output


def test_unknown_text_is_not_recognised():
    result = CliRunner().invoke(cli, ["explain", "the", "cat", "sat", "on", "the", "mat"])
    assert result.exit_code == 1
    assert "not recognised" in result.output


def test_rule_code_still_prints_docs():
    result = CliRunner().invoke(cli, ["explain", "gf001"])
    assert result.exit_code == 0 and "## What it does" in result.output


def test_only_an_errors_first_lines_are_matched():
    """A pattern's `.*` over 117 KB of text took 10 s (helper 108): the first MAX_EXPLAINED characters say what
    an error is, and only they are read."""
    from graphfix.report.knowledge import MAX_EXPLAINED

    known = "Exporting the operator 'aten::repeat_interleave' to ONNX opset version 11 is not supported"
    assert explain_message("x" * (MAX_EXPLAINED - len(known)) + known) is not None
    assert explain_message("x" * MAX_EXPLAINED + known) is None
    assert explain_message("ONNX operator" * 9000) is None
