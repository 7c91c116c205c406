"""graphfix.analysis.broadcast.alignments: the ways a lower-rank operand's dims lie on a higher-rank one's, found
along placements that can be completed and capped, so that operands of many equal dims cost no combinatorial
search (helper 60: a 319-byte model ran for hours)."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys

import onnx
from onnx import TensorProto, helper

from graphfix.analysis.broadcast import MAX_ALIGNMENTS, alignments


def every_alignment(small, big):
    """The definition: each combination of axes of `big` whose dims equal `small`'s, in order (a dim onnx could
    not name, `unk__N`, equals nothing)."""
    return [axes for axes in itertools.combinations(range(len(big)), len(small))
            if all(not str(s).startswith("unk__") and s == big[a] for s, a in zip(small, axes, strict=True))]


def test_the_alignments_are_those_of_the_definition_in_its_order():
    rng = random.Random(0)
    for _ in range(300):
        big = [rng.choice([1, 2, 3, "T", "unk__0"]) for _ in range(rng.randint(0, 7))]
        small = [rng.choice([1, 2, 3, "T", "unk__0"]) for _ in range(rng.randint(0, len(big)))]
        assert alignments(small, big) == every_alignment(small, big)[:MAX_ALIGNMENTS], (small, big)


def test_many_equal_dims_give_at_most_the_cap_and_no_fit_gives_none():
    assert len(alignments([3] * 32, [3] * 64)) == MAX_ALIGNMENTS  # C(64, 32) of them
    assert alignments([3] * 20 + [5], [3] * 40 + [7]) == []  # the 5 lies nowhere: known before any is tried


def test_a_tiny_model_of_high_rank_operands_is_diagnosed_at_once(tmp_path):
    """The helper's model: Add of a rank-41 and a rank-21 operand, all dims 3 but the last. A subprocess timeout
    guards against the old search, which did not end (this is a hang guard, not a timed assertion)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3] * 40 + [7])
    m = helper.make_tensor_value_info("m", TensorProto.FLOAT, [3] * 20 + [5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Add", ["x", "m"], ["y"])], "g", [x, m], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    done = subprocess.run([sys.executable, "-m", "graphfix", "diagnose", "--static", str(tmp_path / "m.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    assert "Traceback" not in done.stderr
