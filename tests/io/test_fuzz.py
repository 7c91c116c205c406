"""A seeded mutation fuzzer over the bundled samples, and every external-data attack, through all six commands.

Each run fails the test on a traceback, an internal error, a rule crash, a run past its budget, a file left in
the temp folder or beside the output, a changed input, an exit code other than the documented one, or (attacks)
a file opened outside the model's folder: seen by an audit hook in the worker (Python opens) and by inotify
(onnxruntime's C++ opens, hard links included).

Exit codes: a mutant is malformed when onnxruntime refuses to load it (asked in the worker, before the commands
run) or when the README's list refuses it although onnxruntime loads it (sparse tensors, names that are not
UTF-8, empty list attributes): every command must exit 2. One onnxruntime refuses for its shapes only (dims or
ranks that do not fit) never passes: an error finding (1) or a refusal (2); one it loads gets a verdict, 0 or 1;
`extract` and `freeze` may refuse the names chosen for the sample (exit 2, one line naming the option). Files
that are no model and external-data attacks exit 2; their valid controls never do.

CI runs seeds 0..299 (three chunks) and every attack, on one worker process per core (2 to 4;
GRAPHFIX_FUZZ_WORKERS sets it), each with its own temp folder. For a longer local run:
    GRAPHFIX_FUZZ_SEEDS=300:2000 pytest tests/io/test_fuzz.py -k mutants
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import onnx
import pytest
from fuzz_attacks import build_attacks
from fuzz_harness import Worker, expected_exits, run_case, run_parallel
from fuzz_mutants import FILE_CASES, mutate
from fuzz_opened import OpenWatch

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "samples").glob("*/model.onnx"))
BUDGET_S = 60.0
CHUNK = 100


def _seed_ranges() -> list[range]:
    given = os.environ.get("GRAPHFIX_FUZZ_SEEDS", "")
    if given:
        start, _, count = given.partition(":")
        return [range(int(start), int(start) + int(count))]
    return [range(start, start + CHUNK) for start in range(0, 300, CHUNK)]


def _names(sample: Path) -> dict[str, str]:
    model = onnx.load(str(sample), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    return {"input": inputs[0], "output": model.graph.output[0].name, "freeze": f"{inputs[-1]}=0"}


OPTIONS = ("--input ", "--inputs", "--outputs")  # the names extract and freeze are given for the sample


def _names_do_not_fit(run) -> bool:
    """`extract` or `freeze` refused the names chosen for the sample (a usage error: one line naming the option):
    the intact sample or the mutant does not take them."""
    lines = run.err.strip().splitlines()
    return (run.rc == 2 and run.command in ("extract", "freeze") and len(lines) == 1
            and any(option in lines[0] for option in OPTIONS))


def _report(runs) -> str:
    bad = [f"{r.case} | {r.command}: {p[:300]}" for r in runs for p in r.problems]
    return "\n".join(bad[:40]) + (f"\n... {len(bad) - 40} more" if len(bad) > 40 else "")


@pytest.fixture
def worker(tmp_path):
    started = Worker(tmp_path / "tmp")
    yield started
    started.stop()


@pytest.mark.parametrize("seeds", _seed_ranges(), ids=lambda r: f"mutants-{r.start}-{r.stop - 1}")
def test_mutants(seeds, tmp_path):
    def run_seed(worker, seed):
        sample = SAMPLES[seed % len(SAMPLES)]
        data, description = mutate(sample.read_bytes(), seed)
        folder = tmp_path / f"m{seed}"
        folder.mkdir()
        (folder / "model.onnx").write_bytes(data)
        loads, why = worker.onnxruntime_loads(folder / "model.onnx", BUDGET_S)
        expected, reason = expected_exits(folder / "model.onnx", loads, why)
        runs = run_case(worker, f"seed {seed} {sample.parent.name}: {description}", folder, folder / "model.onnx",
                        _names(sample), BUDGET_S)
        for run in runs:
            if run.rc not in expected and not (2 not in expected and _names_do_not_fit(run)):
                run.problems.append(f"exit {run.rc}, documented {sorted(expected)} ({reason}{': ' * bool(why)}"
                                    f"{why[:150]}): {(run.out + run.err).strip()[-200:]}")
        shutil.rmtree(folder)
        return runs

    runs = run_parallel(list(seeds), tmp_path / "tmp", run_seed)
    assert len(runs) == 6 * len(seeds)
    assert [int(r.case.split()[1]) for r in runs[::6]] == list(seeds)
    assert not any(r.problems for r in runs), _report(runs)


def test_files_that_are_no_model(worker, tmp_path):
    runs = []
    for name, make in FILE_CASES.items():
        folder = tmp_path / name
        folder.mkdir()
        runs += run_case(worker, f"file {name}", folder, make(folder), {"input": "x", "output": "y", "freeze": "x=0"},
                         BUDGET_S)
    for run in runs:
        if run.rc != 2 or len(run.err.strip().splitlines()) != 1:
            run.problems.append(f"not refused with one line (exit {run.rc}): {(run.out + run.err).strip()[:200]}")
    assert len(runs) == 6 * len(FILE_CASES)
    assert not any(r.problems for r in runs), _report(runs)


def _attack_runs(worker, tmp_path, only: str = ""):
    attacks = [attack for attack in build_attacks(tmp_path / "cases") if only in attack.name]
    if worker is None:
        return run_parallel(attacks, tmp_path / "tmp", _attack)
    return [run for attack in attacks for run in _attack(worker, attack)]


def _attack(worker, attack) -> list:
    watch = OpenWatch([str(p) for p in attack.outside])
    names = {"input": "x,z", "output": "y", "freeze": "z=0"}
    try:
        runs = run_case(worker, attack.name, attack.model.parent, attack.model, names, BUDGET_S,
                        outside=attack.outside, cwd=attack.root / "cwd", watch=watch)
    finally:
        watch.close()
    for run in runs:
        if attack.refuse and run.rc != 2:
            run.problems.append(f"not refused (exit {run.rc}): {(run.out + run.err).strip()[:200]}")
        if attack.refuse and run.rc == 2 and len(run.err.strip().splitlines()) != 1:
            run.problems.append(f"refusal is not one line: {run.err.strip()[:300]}")
        if not attack.refuse and run.rc == 2:
            run.problems.append(f"a valid model was refused: {run.err.strip()[:200]}")
    return runs


def test_external_data_attacks(tmp_path):
    runs = _attack_runs(None, tmp_path)
    assert len(runs) >= 6 * 180
    assert not any(r.problems for r in runs), _report(runs)


@pytest.mark.parametrize("case", ["function/hardlink", "function/relative-to-cwd", "sparse-values/hardlink",
                                  "sparse-indices/relative-to-cwd", "initializer/relative-to-cwd"])
def test_issue_cases_refused_by_every_command_reading_nothing_outside(case, worker, tmp_path):
    """The cases of issue 15 that got through: refused (exit 2) by all six commands, nothing outside opened."""
    runs = _attack_runs(worker, tmp_path, only=case)
    assert [r.rc for r in runs] == [2] * 6, _report(runs)
    assert all(case.split("/")[0] in r.case for r in runs)
    assert not any(r.problems for r in runs), _report(runs)
