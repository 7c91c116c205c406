"""Time bounds: the watchdog stops pure-Python work (where sympy spends its time) on any thread, bounds steps
inside a larger budget, and never raises once its block is left; symbolic inference out of time returns what it
found with a note instead of hanging."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import onnx
import pytest
from onnx import TensorProto, helper

from graphfix.analysis.shapes import symbolic_inference
from graphfix.core.budget import OutOfTime, Watchdog


def spin(seconds: float) -> int:
    """Pure-Python work for `seconds`."""
    end, count = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        count += 1
    return count


def test_a_loop_is_stopped_when_the_time_is_up():
    start = time.monotonic()
    with pytest.raises(OutOfTime), Watchdog(0.2):
        spin(30)
    assert time.monotonic() - start < 5


def test_an_out_of_time_dropped_on_its_way_is_sent_again():
    """The exception can surface in a callback the garbage collector runs (a WeakSet's), where Python prints
    "Exception ignored in" and drops it: the watchdog sends it again until the block is left."""
    dropped, start = [], time.monotonic()
    with pytest.raises(OutOfTime), Watchdog(0.1):
        while time.monotonic() - start < 10:
            try:
                spin(0.01)
            except OutOfTime:
                if dropped:
                    raise
                dropped.append(time.monotonic())  # swallowed, as "Exception ignored in" does
    assert dropped and time.monotonic() - dropped[0] < 5


def test_a_step_is_stopped_and_the_work_goes_on():
    stopped = 0
    with Watchdog(30) as dog:
        for _ in range(2):
            try:
                with dog.step(0.1):
                    spin(30)
            except OutOfTime:
                stopped += 1
        assert not dog.expired
        spin(0.3)  # nothing pending may surface after the steps
    assert stopped == 2


def test_nothing_is_raised_after_the_block():
    with Watchdog(0.05):
        pass
    assert spin(0.3) > 0


def test_it_works_off_the_main_thread():
    def bounded() -> str:
        try:
            with Watchdog(0.1):
                spin(30)
        except OutOfTime:
            return "stopped"
        return "ran out the loop"

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(bounded).result(timeout=20) == "stopped"


def chain(length: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Add", [f"t{i}", "x"], [f"t{i + 1}"]) for i in range(length)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, ["N"]),
                                               helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
                              [helper.make_tensor_value_info(f"t{length}", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_symbolic_inference_out_of_time_returns_what_it_found():
    model = chain(3000)
    start = time.monotonic()
    result = symbolic_inference(model, seconds=0.05)
    assert time.monotonic() - start < 10
    assert result.incomplete and "ran out" in result.incomplete[-1]
    assert len(result.shapes) < 3000 + 2
    complete = symbolic_inference(chain(20), seconds=30)
    assert not complete.incomplete and complete.shapes["t20"] == ["N"]
