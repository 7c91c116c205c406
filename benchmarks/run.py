"""graphfix against its peers, each tool in its own process, on models generated here.

    python benchmarks/run.py [--only bert,llama,chain] [--out benchmarks/results.json]

Prints wall time and peak RSS per tool and the ratio to graphfix, measured in the same run on the same machine.
Targets (issue 7):
  - diagnose --static on the 2.2 GB external-data Llama: <= 3x onnx.checker.check_model(full_check=True), < 300 MiB
  - repair (fix, simplify, prove at 3 sizes) on BERT-base: <= 1.5x onnxsim's time and peak memory
  - diagnose --static on a 100k-node graph: <= ~10x the 10k-node graph (linear)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
GRAPHFIX = [PY, "-m", "graphfix"]
CHECKER = "import onnx, sys; onnx.checker.check_model(sys.argv[1], full_check=True)"
ONNXSIM = ("import onnx, onnxsim, sys; m, ok = onnxsim.simplify(onnx.load(sys.argv[1])); "
           "onnx.save(m, sys.argv[2], save_as_external_data=m.ByteSize() > 2**31 - 2**26)")
ONNXSLIM = "import onnxslim, sys; onnxslim.slim(sys.argv[1], sys.argv[2])"


def generate(builder: str, path: Path, *args: int) -> Path:
    """Build a model in a child process: the benchmark process stays small, so that the peak RSS of the tools it
    starts is theirs alone (a forked child's ru_maxrss counts what it inherited)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        models = Path(__file__).resolve().parent / "models.py"
        subprocess.run([PY, str(models), builder, str(path), *map(str, args)], check=True)
    return path


def measure(name: str, argv: list[str], timeout: float = 1800) -> dict:
    """Wall time and peak RSS of one process (os.wait4 gives the rusage of exactly that child)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.01)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace").strip().splitlines() if proc.stderr else []
    return {"tool": name, "seconds": round(wall, 3), "peak_mib": round(usage.ru_maxrss / 1024, 1), "exit": code,
            "note": stderr[-1][:160] if code not in (0, 1) and stderr else ""}


def compare(title: str, rows: list[dict], target: str = "") -> dict:
    base = rows[0]
    print(f"\n== {title}" + (f"  (target: {target})" if target else ""))
    print(f"{'tool':<34}{'seconds':>9}{'peak MiB':>10}{'time / graphfix':>17}{'mem / graphfix':>16}  exit")
    for row in rows:
        t = row["seconds"] / base["seconds"] if base["seconds"] else float("nan")
        m = row["peak_mib"] / base["peak_mib"] if base["peak_mib"] else float("nan")
        print(f"{row['tool']:<34}{row['seconds']:>9.2f}{row['peak_mib']:>10.0f}{t:>17.2f}{m:>16.2f}  {row['exit']}"
              f"{'  ' + row['note'] if row['note'] else ''}")
    return {"title": title, "target": target, "rows": rows}


def repair_vs_simplifiers(model: Path, out: Path) -> list[dict]:
    """graphfix repair, then onnxsim and onnxslim on the same model, each writing into `out`."""
    out.mkdir(exist_ok=True)
    return [
        measure("graphfix repair (fix+simplify+prove)", [*GRAPHFIX, "repair", str(model), "-o", str(out / "gf.onnx")]),
        measure("onnxsim.simplify", [PY, "-c", ONNXSIM, str(model), str(out / "sim.onnx")]),
        measure("onnxslim", [PY, "-c", ONNXSLIM, str(model), str(out / "slim.onnx")]),
    ]


def bench_bert(work: Path) -> dict:
    model = generate("bert_base", work / "bert.onnx")
    return compare("BERT-base (TorchScript export, 435 MB inline): repair vs simplifiers", [
        *repair_vs_simplifiers(model, work / "bert_out"),
        measure("polygraphy check lint", ["polygraphy", "check", "lint", str(model)]),
        measure("graphfix diagnose --static", [*GRAPHFIX, "diagnose", "--static", str(model)]),
    ], "repair <= 1.5x onnxsim time and peak memory")


def bench_bert_repair(work: Path) -> dict:
    model = generate("bert_base_with_dead_branch", work / "bert_dead.onnx")
    return compare("BERT-base with a dead branch: repair runs fix + onnxsim + validation",
                   repair_vs_simplifiers(model, work / "bert_dead_out"), "repair <= 1.5x onnxsim time and peak memory")


def bench_llama(work: Path) -> dict:
    model = generate("llama_06b", work / "llama" / "llama.onnx")
    return compare("Llama-style 0.6B (dynamo export, external data)", [
        measure("graphfix diagnose --static", [*GRAPHFIX, "diagnose", "--static", str(model)]),
        measure("onnx.checker full_check", [PY, "-c", CHECKER, str(model)]),
        *repair_vs_simplifiers(model, work / "llama_out"),
        measure("polygraphy check lint", ["polygraphy", "check", "lint", str(model)]),
    ], "diagnose --static <= 3x checker, < 300 MiB")


def bench_chain(work: Path) -> dict:
    rows = []
    for nodes in (10_000, 100_000):
        model = generate("chain_graph", work / f"chain_{nodes}.onnx", nodes)
        rows.append(measure(f"graphfix diagnose --static {nodes // 1000}k", [*GRAPHFIX, "diagnose", "--static",
                                                                            str(model)]))
    for nodes in (10_000, 100_000):
        rows.append(measure(f"onnx.checker full_check {nodes // 1000}k", [PY, "-c", CHECKER,
                                                                         str(work / f"chain_{nodes}.onnx")]))
    return compare("Synthetic chains: static diagnose must grow linearly", rows, "100k <= ~10x 10k")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="chain,bert,bert-repair,llama")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "graphfix-bench")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    benches = {"chain": bench_chain, "bert": bench_bert, "bert-repair": bench_bert_repair, "llama": bench_llama}
    results = [benches[name](args.work) for name in args.only.split(",")]
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
