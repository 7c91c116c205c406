"""A stop while an output is moved into place (helper 126): `--timeout`'s SIGALRM or a SIGTERM raised between the
move of a model's data and that of its graph left `OUT.data` alone in the output folder, and one raised after both
said "nothing was written". The moves now run uninterrupted (graphfix.core.critical): a stop meanwhile is raised
once both files are there, and the run records what it wrote (`forked.committed_outputs`), which `--timeout`'s
line then names."""

from __future__ import annotations

import signal

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphfix.core import forked
from graphfix.core.critical import stop_with, uninterrupted
from graphfix.core.errors import TimedOut
from graphfix.io import saving
from graphfix.io.saving import stage_model


@pytest.fixture
def alarm_stops():
    """SIGALRM handled as `--timeout` handles it: a TimedOut, at once or where an uninterrupted section ends."""
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: stop_with(TimedOut("stopped (--timeout)")))
    yield
    signal.signal(signal.SIGALRM, previous)


def test_a_stop_inside_an_uninterrupted_section_is_raised_at_its_end(alarm_stops):
    done = []
    with pytest.raises(TimedOut), uninterrupted():
        signal.raise_signal(signal.SIGALRM)
        done.append("after the signal")
    assert done == ["after the signal"]
    with pytest.raises(TimedOut):
        signal.raise_signal(signal.SIGALRM)


def test_a_stop_between_the_data_and_the_graph_leaves_both_or_neither(tmp_path, alarm_stops, monkeypatch):
    source = tmp_path / "in" / "model.onnx"
    source.parent.mkdir()
    weight = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), source,
              save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    destination = tmp_path / "out" / "fixed.onnx"
    staged = stage_model(onnx.load(source, load_external_data=False), destination, source.parent)
    assert staged.data_name, "the output has a data file"
    fsync = saving._fsync

    def stopped_at_the_graph(name, stage):  # the stop arrives once the data has moved, before the graph does
        if name == destination.name:
            signal.raise_signal(signal.SIGALRM)
        fsync(name, stage)

    monkeypatch.setattr(saving, "_fsync", stopped_at_the_graph)
    with pytest.raises(TimedOut):
        staged.commit()
    assert sorted(p.name for p in destination.parent.iterdir()) == ["fixed.onnx", staged.data_name]
    assert str(destination) in forked.committed_outputs()
    np.testing.assert_array_equal(numpy_helper.to_array(onnx.load(destination).graph.initializer[0]),
                                  numpy_helper.to_array(weight))
