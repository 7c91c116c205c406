"""A size equation's one root (graphfix.analysis.sizes.roots): samples before sympy, sympy.solve time bounded.

torchvision's swin_v2_t exported with dynamo (dynamic batch, H, W) made `diagnose --static` spend 167 s in
sympy.solve on its windows' element counts, and `diagnose` run past 180 s printing nothing. `swin_window_count` is
one of those constraints as the size analysis writes it (Reshape 'node_view_7' of that export).
"""

from __future__ import annotations

import time

import onnx_graphsurgeon as gs
import pytest

from graphfix.analysis.sizes import Constraint, solve
from graphfix.analysis.sizes import roots as roots_module
from graphfix.analysis.sizes.roots import Solver, sample_roots
from graphfix.core.lazy import sympy

B, H, W, T = (sympy.Symbol(n, integer=True, positive=True) for n in "BHWT")


def swin_window_count() -> tuple:
    """The two sides of the window partition's element count: 96 B pad_H pad_W, the padded sizes rolled by 4, and
    the reshape's 6144 (8*8*96) times the window counts, with batch 1 baked into the shape vector."""
    def padded(size):  # floor(size / 4) padded up to a multiple of the window, 8
        quarter = sympy.floor(size / 4)
        return sympy.Mod(7 * quarter, 8) + quarter

    def rolled(length):  # torch.roll's two slices, concatenated back: a length again, spelt through Mod(4, length)
        return -sympy.Mod(4, length) + length + sympy.Min(length, sympy.Mod(4, length))

    def windows(size):
        quarter = sympy.floor(size / 4)
        return sympy.floor(sympy.Mod(7 * quarter, 8) / 8 + quarter / 8)

    return 96 * B * rolled(padded(H)) * rolled(padded(W)), 6144 * windows(H) * windows(W)


@pytest.fixture
def tried(monkeypatch) -> list:
    """The symbols handed to sympy.solve (through graphfix.core.lazy, as the analysis calls it)."""
    calls, real = [], sympy.solve
    monkeypatch.setattr(sympy, "solve", lambda equation, symbol: calls.append(symbol) or real(equation, symbol),
                        raising=False)
    return calls


def reshape(name: str, left, right) -> Constraint:
    return Constraint("reshape", gs.Node("Reshape", name), left, right)


def test_the_samples_keep_a_baked_size_and_rule_out_a_root_that_moves():
    assert sample_roots(sympy.expand(16 * B * T - 112 * B), T) == {7}  # T = 7 at every B: a baked size
    assert sample_roots(B * sympy.floor(H / 4) - H, B) == set()  # B = H / floor(H / 4): no one size
    assert sample_roots(B - sympy.Mod(4, sympy.floor(H / 1024)), B) is None  # a Mod by 0 at every sample: no say


def test_a_linear_root_the_samples_share_needs_no_sympy_solve(tried):
    solution = solve(reshape("view", 16 * B * T, 112 * B))
    assert (solution.symbol, solution.value) == (T, 7)
    assert tried == []
    assert solve(reshape("view", B * sympy.floor(H / 4), H)) is None and tried == []  # ruled out by the samples


def test_the_swin_window_count_goes_to_sympy_and_no_further_once_the_time_is_spent(monkeypatch, tried):
    left, right = swin_window_count()
    assert sample_roots(sympy.expand(left - right), B) == {1}  # batch 1 fits every sample, but not as written
    monkeypatch.setattr(roots_module, "SOLVING_S", 0.0)  # the graph state's time already spent
    notes: list[str] = []
    solver = Solver(notes)
    assert solve(reshape("node_view_7", left, right), solver) is None
    assert solve(reshape("node_view_7", left, right), solver) is None  # a second rule asks: answered, noted once
    assert tried == []
    assert notes == ["sympy ran out of time solving the size constraint at 'node_view_7' (1 s each, 0 s in all): "
                     "it, and any later one sympy had to solve, pin no size"]


def test_a_sympy_solve_past_its_step_is_stopped_and_noted(monkeypatch):
    def endless(equation, symbol):  # sympy simplifying Swin's windows, as far as this test is concerned
        end = time.monotonic() + 60
        while time.monotonic() < end:
            pass
        return [sympy.Integer(1)]

    monkeypatch.setattr(sympy, "solve", endless, raising=False)
    monkeypatch.setattr(roots_module, "STEP_S", 0.05)
    solver = Solver()
    assert solver.roots(B * B - 3 * B + 2, B, "node_view_7") is None
    assert solver.one_root(sympy.expand(B * B - 3 * B + 2)) is None
    assert len(solver.notes) == 1 and "'node_view_7'" in solver.notes[0]


def test_one_solver_solves_each_equation_once(tried):
    solver = Solver()
    constraint = reshape("view", B * B + 2, 3 * B)  # B = 1 or 2: the samples leave it to sympy
    assert solve(constraint, solver) is None and solve(constraint, solver) is None
    assert tried == [B]
    assert solve(constraint) is None and tried == [B, B]  # a fresh solver asks again


# A Reshape of x[B, H] to [2, 4*(H // 4) + H % 4]: batch 2 baked, which sympy cannot prove (it leaves B as
# 2*(Mod(H, 4) + 4*floor(H/4))/H), as it cannot on Swin's windows; the samples share B = 2, so sympy is asked.
BAKED_BATCH = """
< ir_version: 8, opset_import: ["" : 17] >
g (float[B, H] x) => (float[?, ?] y) {
    shape = Shape(x)
    one = Constant <value = int64 {1}> ()
    h = Gather <axis = 0> (shape, one)
    four = Constant <value = int64 {4}> ()
    quarters = Div(h, four)
    rest = Mod(h, four)
    whole = Mul(quarters, four)
    length = Add(whole, rest)
    zero = Constant <value = int64[1] {0}> ()
    length1 = Unsqueeze(length, zero)
    batch = Constant <value = int64[1] {2}> ()
    target = Concat <axis = 0> (batch, length1)
    y = Reshape(x, target)
}
"""


def test_a_constraint_left_unsolved_for_time_is_an_info_finding_of_the_rule_that_asked(monkeypatch):
    from conftest import parse

    from graphfix.api import diagnose

    model = parse(BAKED_BATCH)
    assert diagnose(model, static=True) == []  # sympy answers in time: no size pinned, nothing to say
    monkeypatch.setattr(roots_module, "SOLVING_S", 0.0)
    [note] = diagnose(model, static=True)
    assert (note.rule, note.name, note.severity.value) == ("GF004", "analysis-incomplete", "info")
    assert note.message.startswith("sympy ran out of time solving the size constraint at ")
