"""Resource bombs through all six commands: each run ends within 60 s, under 4 GB, and says what it skipped.

Each bomb runs in its own worker process (so its peak memory is its own), under a 6 GB address-space cap."""

from __future__ import annotations

import pytest
from fuzz_bombs import BOMBS
from fuzz_harness import COMMANDS, Worker, run_case

BUDGET_S = 60.0
PEAK_MB = 4096
# what the output must say for the bomb (every command that gets past the node budget and runs the probe)
SKIPPED = {
    "reshape_1e12": ("tensor 'big' [1000000, 1000000] would take 4,000,000,000,000 bytes, over the probe's memory "
                     "budget", ("diagnose", "check", "repair")),
    "range_1e12": ("tensor 'r' [1000000000000] would take 8,000,000,000,000 bytes, over the probe's memory budget",
                   ("diagnose", "check", "repair")),
    "huge_input_dim": ("over the probe's memory budget", ("diagnose", "check", "repair")),
    "function_2_20": ("node budget", COMMANDS),
    "chain_1e6": ("node budget", COMMANDS),
    "loop_1e12": ("run budget", ("diagnose", "check")),
    "sequence_input": ("is a sequence", ("diagnose", "check")),
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_bomb_finishes_in_budget(bomb, tmp_path):
    folder = tmp_path / bomb
    folder.mkdir()
    (folder / "model.onnx").write_bytes(BOMBS[bomb]().SerializeToString())
    # the loop bomb runs until the run budget stops it (in diagnose and check, each probe size): a 2 s budget
    # exercises the same stop as the 10 s default, in a fifth of the time
    env = {"GRAPHFIX_MAX_RUN_SECONDS": "2"} if bomb == "loop_1e12" else None
    worker = Worker(tmp_path / "tmp", memory_limit=6 << 30, extra_env=env)
    try:
        runs = run_case(worker, bomb, folder, folder / "model.onnx",
                        {"input": "x", "output": "y", "freeze": "x=0"}, BUDGET_S)
        peak_mb = worker.run(["rules"], tmp_path, [], BUDGET_S)["maxrss_mb"]
    finally:
        worker.stop()
    problems = [f"{r.command}: {p[:300]}" for r in runs for p in r.problems]
    assert not problems, "\n".join(problems)
    assert all(r.seconds < BUDGET_S for r in runs), [(r.command, round(r.seconds, 1)) for r in runs]
    assert peak_mb < PEAK_MB
    if bomb in SKIPPED:
        text, commands = SKIPPED[bomb]
        said = {r.command for r in runs if text in r.out + r.err}
        assert said >= set(commands), {r.command: (r.out + r.err)[-300:] for r in runs if r.command not in said}
        # the note ends the command: nothing proven (exit 1), no run handed to onnxruntime to fail allocating
        assert all(r.rc == 1 for r in runs if r.command in commands), [(r.command, r.rc) for r in runs]
    assert not [r.command for r in runs if "Failed to allocate" in r.out + r.err]
