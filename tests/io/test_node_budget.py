"""The node budget: past it, diagnose and check finish what they can and say what they skipped (exit 1)."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import bounded_graphfix
from onnx import TensorProto, helper, numpy_helper

from graphfix.cli import cli
from graphfix.io.budgets import ENV_MAX_NODES, expanded_node_count

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
BUDGET = 100


def _doubling(levels: int) -> list[onnx.FunctionProto]:
    """F<levels> calls F<levels-1> twice ... F0 is one Relu: 2**levels nodes once expanded."""
    functions = [helper.make_function("local", "F0", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])], OPSETS)]
    for level in range(1, levels + 1):
        body = [helper.make_node(f"F{level - 1}", ["a"], ["h"], domain="local"),
                helper.make_node(f"F{level - 1}", ["h"], ["b"], domain="local")]
        functions.append(helper.make_function("local", f"F{level}", ["a"], ["b"], body, OPSETS))
    return functions


def _model(levels: int, chain: int = 0) -> onnx.ModelProto:
    """x [B, 4] + a [3] constant (GF003, found without running), then F<levels>, then `chain` Relus."""
    nodes = [helper.make_node("Add", ["x", "three"], ["bad"]),
             helper.make_node(f"F{levels}", ["bad"], ["t0"], domain="local")]
    nodes += [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(chain)]
    nodes.append(helper.make_node("Identity", [f"t{chain}"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ones(3, np.float32), "three")])
    return helper.make_model(graph, opset_imports=OPSETS, functions=_doubling(levels), ir_version=9)


@pytest.fixture
def budget(monkeypatch):
    monkeypatch.setenv(ENV_MAX_NODES, str(BUDGET))


def _write(tmp_path, model) -> str:
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


@pytest.mark.parametrize("args", [["diagnose"], ["diagnose", "--static"], ["check", "--jobs", "1"]])
def test_function_expansion_over_budget_runs_the_static_rules_and_says_what_it_skipped(args, budget, tmp_path):
    path = _write(tmp_path, _model(levels=8))  # 3 nodes in the graph, 256 once expanded
    result = CliRunner().invoke(cli, [*args, path])
    assert result.exit_code == 1, result.output
    assert "GF003" in result.output  # the graph's own finding: the rules ran on the unexpanded graph
    assert f"more than {BUDGET} nodes once its model-local functions are expanded" in result.output
    assert "the functions were not expanded" in result.output and "the model was not run" in result.output
    assert not re.search(r"GF000\s+runtime-failure", result.output)  # a skip, not a failure (the check table too)
    assert "internal error" not in result.output


@pytest.mark.parametrize("args", [["diagnose"], ["check", "--jobs", "1"]])
def test_a_model_within_the_budget_is_probed(args, budget, tmp_path):
    path = _write(tmp_path, _model(levels=4))  # 16 nodes once expanded
    result = CliRunner().invoke(cli, [*args, path])
    assert "GF003" in result.output and "node budget" not in result.output, result.output


@pytest.mark.parametrize("command", ["repair", "extract", "freeze"])
def test_commands_that_must_run_the_model_refuse_it(command, budget, tmp_path):
    path = _write(tmp_path, _model(levels=8))
    out = str(tmp_path / "out.onnx")
    args = {"repair": ["repair", path, "-o", out],
            "extract": ["extract", path, "--inputs", "x", "--outputs", "y", "-o", out],
            "freeze": ["freeze", path, "--input", "x=0", "-o", out]}[command]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "over the node budget" in result.output and "not analysed" in result.output
    assert not (tmp_path / "out.onnx").exists()


def test_a_graph_whose_own_nodes_are_over_the_budget_is_not_analysed(budget, tmp_path):
    path = _write(tmp_path, _model(levels=1, chain=BUDGET))
    result = CliRunner().invoke(cli, ["diagnose", "--static", path])
    assert result.exit_code == 1
    assert f"more than {BUDGET} nodes, over the node budget ({ENV_MAX_NODES}): not analysed" in result.output


@pytest.mark.parametrize("args", [["diagnose"], ["diagnose", "--static"], ["check"]])
def test_a_function_bomb_is_diagnosed_without_expanding_it(args, tmp_path):
    """2**40 nodes once inlined, in 2 KB: onnx's type and shape inference would inline them all (the time doubled
    with each level: days at 35), so they get the graph without its functions, as the rules do."""
    path = _write(tmp_path, _model(levels=40))
    done = bounded_graphfix(*args, path, seconds=60)
    assert done.returncode == 1, done.stderr
    assert "GF003" in done.stdout and "once its model-local functions are expanded" in done.stdout
    assert "the functions were not expanded" in done.stdout and "internal error" not in done.stderr


def test_a_function_chain_deeper_than_python_recursion_is_counted(tmp_path):
    """F0 calls F1 ... calls F4999: counted without recursion, each function once."""
    functions = [helper.make_function("local", f"F{k}", ["a"], ["b"],
                                      [helper.make_node(f"F{k + 1}", ["a"], ["b"], domain="local")], OPSETS)
                 for k in range(4999)]
    functions.append(helper.make_function("local", "F4999", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                                          OPSETS))
    model = helper.make_model(helper.make_graph([helper.make_node("F0", ["x"], ["y"], domain="local")], "g",
                                                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]),
                              opset_imports=OPSETS, functions=functions, ir_version=9)
    assert expanded_node_count(model, 10) == 1
    assert expanded_node_count(model, 10**6, expand=False) == 1
