"""graphfix against all its peers (issues 7 and 13), each tool in its own process, on models generated here.

Issue 23's table, graphfix against the one peer each row names, is benchmarks/run.py.

    python benchmarks/peers.py [--only chain,bert,bert-repair,llama,big,maskrcnn] [--repeat 3] [--out results.json]

Prints wall time and peak RSS per tool (the median of --repeat runs) and the ratio to graphfix, measured in the
same run on the same machine, then whether each target is met. Targets (issue 7):
  - diagnose --static on the 2.2 GiB external-data Llama: <= 3x onnx.checker.check_model(full_check=True), < 300 MiB
  - repair (fix, simplify, prove at 3 sizes) on BERT-base: <= 1.5x onnxsim's time and peak memory
  - diagnose --static on a 100k-node graph: <= ~10x the 10k-node graph (linear)
  - diagnose, repair, extract and freeze all go through the model over 2 GiB
  - (issue 13) diagnose --static on torchvision Mask R-CNN < 10 s; diagnose, repair and check < 60 s each

onnxsim runs as its fastest documented call, `onnxsim.simplify(path, output_path=...)` (the C++ core reads and
writes the file itself), twice: as installed, and with torch hidden from its import (onnxsim's package imports
torch when torch is installed, about 1.5 s, though simplification never uses it). The repair target is held to
the faster of the two.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import measure

PY = sys.executable
GRAPHFIX = [PY, "-m", "graphfix"]
POLYGRAPHY = str(Path(PY).parent / "polygraphy")  # the interpreter's own, whether or not its venv is active
CHECKER = "import onnx, sys; onnx.checker.check_model(sys.argv[1], full_check=True)"
ONNXSIM = ("import onnxsim, sys; onnxsim.simplify(sys.argv[1], output_path=sys.argv[2], "
           "external_data_threshold='2GB')")
ONNXSIM_NO_TORCH = "import sys; sys.modules['torch'] = None; " + ONNXSIM
ONNXSLIM = "import onnxslim, sys; onnxslim.slim(sys.argv[1], sys.argv[2])"


def generate(builder: str, path: Path, *args: int) -> Path:
    """Build a model in a child process: the benchmark process stays small, so that the peak RSS of the tools it
    starts is theirs alone (a forked child's ru_maxrss counts what it inherited)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        models = Path(__file__).resolve().parent / "models.py"
        subprocess.run([PY, str(models), builder, str(path), *map(str, args)], check=True)
    return path


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


def verdict(rows: list[dict], tool: str, references: list[str], limit: float, key: str = "seconds",
            what: str = "time") -> str:
    """One line: `tool`'s figure over the best of `references`, against `limit`."""
    by_name = {r["tool"]: r for r in rows}
    mine = by_name[tool]
    usable = [by_name[r] for r in references if by_name[r]["exit"] == 0]
    if mine["exit"] != 0 or not usable:
        return f"  {what}: cannot compare ({tool} exit {mine['exit']}, {len(usable)} usable reference(s))"
    best = min(usable, key=lambda r: r[key])
    ratio = mine[key] / best[key]
    line = (f"  {what}: {tool} / {best['tool']} = {ratio:.2f}x (target <= {limit:g}x): "
            f"{'met' if ratio <= limit else 'NOT met'}")
    print(line)
    return line


ONNXSIMS = ["onnxsim.simplify(path)", "onnxsim.simplify(path), no torch"]
REPAIR = "graphfix repair (fix, simplify, prove)"


def repair_vs_simplifiers(model: Path, out: Path, repeat: int) -> list[dict]:
    """graphfix repair, then onnxsim (as installed, and with torch hidden) and onnxslim on the same model."""
    out.mkdir(exist_ok=True)
    return [
        measure(REPAIR, [*GRAPHFIX, "repair", str(model), "-o", str(out / "gf.onnx")],
                repeat),
        measure("onnxsim.simplify(path)", [PY, "-c", ONNXSIM, str(model), str(out / "sim.onnx")], repeat),
        measure("onnxsim.simplify(path), no torch", [PY, "-c", ONNXSIM_NO_TORCH, str(model), str(out / "sim.onnx")],
                repeat),
        measure("onnxslim", [PY, "-c", ONNXSLIM, str(model), str(out / "slim.onnx")]),
    ]


def repair_target(title: str, rows: list[dict]) -> dict:
    result = compare(title, rows, "repair <= 1.5x onnxsim time and peak memory")
    result["verdicts"] = [verdict(rows, REPAIR, ONNXSIMS, 1.5), verdict(rows, REPAIR, ONNXSIMS, 1.5, "peak_mib",
                                                                        "peak memory")]
    return result


def bench_bert(work: Path, repeat: int) -> dict:
    model = generate("bert_base", work / "bert.onnx")
    return repair_target("BERT-base (TorchScript export, 435 MB inline), healthy: repair vs simplifiers", [
        *repair_vs_simplifiers(model, work / "bert_out", repeat),
        measure("polygraphy check lint", [POLYGRAPHY, "check", "lint", str(model)]),
        measure("graphfix diagnose --static", [*GRAPHFIX, "diagnose", "--static", str(model)], repeat),
    ])


def bench_bert_repair(work: Path, repeat: int) -> dict:
    model = generate("bert_base_with_dead_branch", work / "bert_dead.onnx")
    return repair_target("BERT-base with a dead branch: repair runs fix + onnxsim + validation",
                         repair_vs_simplifiers(model, work / "bert_dead_out", repeat))


def bench_llama(work: Path, repeat: int) -> dict:
    model = generate("llama_06b", work / "llama" / "llama.onnx")
    out = work / "llama_out"
    out.mkdir(exist_ok=True)
    rows = [
        measure("graphfix diagnose --static", [*GRAPHFIX, "diagnose", "--static", str(model)], repeat),
        measure("onnx.checker full_check", [PY, "-c", CHECKER, str(model)], repeat),
        measure("graphfix repair (healthy)", [*GRAPHFIX, "repair", str(model), "-o", str(out / "gf.onnx")]),
        measure("onnxsim.simplify(path)", [PY, "-c", ONNXSIM, str(model), str(out / "sim.onnx")]),
        measure("onnxslim", [PY, "-c", ONNXSLIM, str(model), str(out / "slim.onnx")]),
        measure("polygraphy check lint", [POLYGRAPHY, "check", "lint", str(model)]),
    ]
    result = compare("Llama-style 0.6B (dynamo export, 2.38 GB = 2.22 GiB external data)", rows,
                     "diagnose --static <= 3x checker, < 300 MiB")
    result["verdicts"] = [verdict(rows, "graphfix diagnose --static", ["onnx.checker full_check"], 3.0)]
    peak = rows[0]["peak_mib"]
    line = f"  peak memory: graphfix diagnose --static {peak:.0f} MiB (target < 300 MiB): " + \
        ("met" if peak < 300 else "NOT met")
    print(line)
    result["verdicts"].append(line)
    return result


def bench_big(work: Path, repeat: int) -> dict:
    """Every command that takes a model, on the model over 2 GiB (weights never loaded into Python)."""
    folder, out = work / "llama", work / "llama_out"
    out.mkdir(parents=True, exist_ok=True)
    dead = generate("llama_06b_with_dead_branch", folder / "llama_dead.onnx")
    scaled = generate("llama_06b_with_scale_input", folder / "llama_scale.onnx")
    rows = [
        measure("graphfix diagnose --static", [*GRAPHFIX, "diagnose", "--static", str(dead)]),
        measure("graphfix diagnose (probes with ORT)", [*GRAPHFIX, "diagnose", str(dead)]),
        measure("graphfix repair (GF001 fix)", [*GRAPHFIX, "repair", str(dead), "-o", str(out / "repaired.onnx")]),
        measure("graphfix extract (decoder body)", [*GRAPHFIX, "extract", str(folder / "llama.onnx"), "--inputs",
                                                    "input_ids", "--outputs", "mul_6829", "-o",
                                                    str(out / "decoder.onnx")]),
        measure("graphfix freeze --input scale=1", [*GRAPHFIX, "freeze", str(scaled), "--input", "scale=1", "-o",
                                                    str(out / "frozen.onnx")]),
    ]
    result = compare("The 2.22 GiB Llama end to end (exit 1 = findings reported)", rows,
                     "diagnose, repair, extract, freeze all succeed")
    failed = [r["tool"] for r in rows if r["exit"] not in (0, 1)]
    line = "  end to end: " + ("met" if not failed else "NOT met: " + ", ".join(failed))
    print(line)
    result["verdicts"] = [line]
    return result


def bench_chain(work: Path, repeat: int) -> dict:
    rows = []
    for nodes in (10_000, 100_000):
        model = generate("chain_graph", work / f"chain_{nodes}.onnx", nodes)
        rows.append(measure(f"graphfix diagnose --static {nodes // 1000}k", [*GRAPHFIX, "diagnose", "--static",
                                                                            str(model)], repeat))
    for nodes in (10_000, 100_000):
        rows.append(measure(f"onnx.checker full_check {nodes // 1000}k", [PY, "-c", CHECKER,
                                                                         str(work / f"chain_{nodes}.onnx")], repeat))
    result = compare("Synthetic chains: static diagnose must grow linearly", rows, "100k <= ~10x 10k")
    ratio = rows[1]["seconds"] / rows[0]["seconds"]
    line = f"  growth: 100k / 10k = {ratio:.1f}x (target <= ~10x): {'met' if ratio <= 10.5 else 'NOT met'}"
    print(line)
    result["verdicts"] = [line]
    return result


def bench_maskrcnn(work: Path, repeat: int) -> dict:
    """Symbolic shape inference alone ran for minutes in sympy on this graph before it had a time bound."""
    model = generate("maskrcnn", work / "maskrcnn.onnx")
    out = work / "maskrcnn_out"
    out.mkdir(exist_ok=True)
    rows = [
        measure("graphfix diagnose --static", [*GRAPHFIX, "diagnose", "--static", str(model)], repeat),
        measure("graphfix diagnose (probes with ORT)", [*GRAPHFIX, "diagnose", str(model)]),
        measure("graphfix repair", [*GRAPHFIX, "repair", str(model), "-o", str(out / "repaired.onnx")]),
        measure("graphfix check", [*GRAPHFIX, "check", str(model)]),
        measure("onnx.checker full_check", [PY, "-c", CHECKER, str(model)], repeat),
    ]
    result = compare("torchvision Mask R-CNN (TorchScript export, dynamic H, W)", rows,
                     "diagnose --static < 10 s; every command < 60 s, exit 0")
    static, slow = rows[0]["seconds"], [r["tool"] for r in rows[1:4] if r["seconds"] >= 60 or r["exit"] != 0]
    lines = [f"  diagnose --static: {static:.1f} s (target < 10 s): {'met' if static < 10 else 'NOT met'}",
             "  every command < 60 s, exit 0: " + ("met" if not slow else "NOT met: " + ", ".join(slow))]
    print("\n".join(lines))
    result["verdicts"] = lines
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="chain,bert,bert-repair,llama,big,maskrcnn")
    parser.add_argument("--repeat", type=int, default=3, help="runs per fast tool; the median is reported")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "graphfix-bench")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    benches = {"chain": bench_chain, "bert": bench_bert, "bert-repair": bench_bert_repair, "llama": bench_llama,
               "big": bench_big, "maskrcnn": bench_maskrcnn}
    results = [benches[name](args.work, args.repeat) for name in args.only.split(",")]
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
