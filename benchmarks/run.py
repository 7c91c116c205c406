"""Issue 23's table: each row's graphfix command beside its peer, measured in one run, as ratios.

    python benchmarks/run.py [--repeat 5] [--llama-layers 8] [--only static-llama,...] [--out results.json]
    python benchmarks/run.py --tiny --repeat 1        # toy models: checks that every row runs (its test)

Rows (goals from issue 23):
  static-llama      `graphfix diagnose --static` on the Llama-style model with external data, against
                    `onnx.checker.check_model(path, full_check=True)`: <= 1.0x time, <= 1.5x memory; beside
                    them the floor both share, `import onnx` alone (reported, not a peer)
  repair-bert-pad   `graphfix repair` of BERT-base with `h[pad] = 0` (GF003 fixes it; fix, onnxsim, proof, write)
                    against onnxsim alone: <= 1.0x time and memory; exits 0 and matches PyTorch at 3 sizes
  repair-bert       `graphfix repair` of a healthy BERT-base against onnxsim alone: keep 0.40x time, 0.62x memory
  repair-llama      `graphfix repair` of the Llama-style model against onnxsim alone: peak <= 1.5x its weights

Every command runs in its own process, whole (start-up and imports included, each tool's modules from cached
bytecode, as installed: `compile_bytecode`); the tools of a row run in turn,
A B A B ..., so that a drift in the machine's speed reaches both. Reported: the median of --repeat runs of the
wall time and of the peak memory of the process tree (benchmarks/measure.py). onnxsim runs as its fastest
documented call, `onnxsim.simplify(path, output_path=...)`, as installed and with torch hidden from its import
(its package imports torch, about 1.5 s, though simplification never uses it): a row's ratio is to the faster.

The models are built here, once per --work folder (benchmarks/models.py): BERT-base from transformers with random
weights (TorchScript export, dynamic batch and length; 435 MB inline), and the Llama-style decoder (Qwen3-0.6B's
dimensions, dynamo export, weights in external data) with --llama-layers of its 28 layers: 8 give 1.13 GB, all
28 give the issue's 2.38 GB (2.22 GiB).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import run_once

PY = sys.executable
HERE = Path(__file__).resolve().parent
GRAPHFIX = [PY, "-m", "graphfix"]
CHECKER = "import onnx, sys; onnx.checker.check_model(sys.argv[1], full_check=True)"
FLOOR = "import onnx"  # the interpreter and onnx's import (numpy and protobuf with it): paid by the checker too
ONNXSIM = ("import onnxsim, sys; onnxsim.simplify(sys.argv[1], output_path=sys.argv[2], "
           "external_data_threshold='2GB')")
ONNXSIM_NO_TORCH = "import sys; sys.modules['torch'] = None; " + ONNXSIM
ROWS = ("static-llama", "repair-bert-pad", "repair-bert", "repair-llama")


def compile_bytecode() -> None:
    """graphfix's modules compiled to cached bytecode, as pip compiles every package it installs (the peers' are):
    with PYTHONDONTWRITEBYTECODE set (this project's machines set it), a checkout would otherwise compile each
    module from source at every run (0.07 s of the static row). Only writes __pycache__ folders beside them."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([PY, "-m", "compileall", "-q", str(HERE.parent / "graphfix"), str(HERE.parent / "rules")],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def build_models(work: Path, layers: int, tiny: bool) -> None:
    """In a child process, so that this one stays small (its own memory is in no figure)."""
    subprocess.run([PY, str(HERE / "models.py"), "issue23", str(work), str(layers), str(int(tiny))], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def side_by_side(tools: dict[str, list[str]], repeat: int) -> dict[str, dict]:
    """Each tool `repeat` times, in turn; the median seconds and peak MiB of each. A tool whose run fails (exit
    other than 0 or 1) is not run again: its failure is its figure."""
    runs: dict[str, list[dict]] = {name: [] for name in tools}
    for _ in range(repeat):
        for name, argv in tools.items():
            if not runs[name] or runs[name][-1]["exit"] in (0, 1):
                runs[name].append(run_once(argv, timeout=1800))
    return {name: _median(name, series) for name, series in runs.items()}


def _median(name: str, series: list[dict]) -> dict:
    return {"tool": name, "seconds": round(statistics.median(r["seconds"] for r in series), 3),
            "peak_mib": round(statistics.median(r["peak_mib"] for r in series), 1),
            "exit": max((r["exit"] for r in series), key=abs), "note": series[-1]["note"],
            "runs_s": [r["seconds"] for r in series], "peaks_mib": [r["peak_mib"] for r in series]}


def ratios(mine: dict, peers: list[dict]) -> dict:
    """graphfix's figures over the faster peer's (a peer that failed is no yardstick)."""
    usable = [p for p in peers if p["exit"] == 0]
    if mine["exit"] not in (0, 1) or not usable:
        return {"peer": None, "time_ratio": None, "memory_ratio": None}
    best = min(usable, key=lambda p: p["seconds"])
    return {"peer": best["tool"], "time_ratio": round(mine["seconds"] / best["seconds"], 3),
            "memory_ratio": round(mine["peak_mib"] / best["peak_mib"], 3)}


def goal(what: str, value: float | None, limit: float) -> dict:
    return {"what": what, "value": value, "limit": limit, "met": value is not None and value <= limit}


TINY = False  # --tiny: onnxsim runs once per row, torch hidden (the row's yardstick either way)


def onnxsim_peers(model: Path, out: Path) -> dict[str, list[str]]:
    hidden = {"onnxsim.simplify(path), torch hidden": [PY, "-c", ONNXSIM_NO_TORCH, str(model),
                                                       str(out / "onnxsim.onnx")]}
    if TINY:
        return hidden
    return {"onnxsim.simplify(path)": [PY, "-c", ONNXSIM, str(model), str(out / "onnxsim.onnx")], **hidden}


def row_static_llama(work: Path, repeat: int) -> dict:
    model = work / "llama" / "llama.onnx"
    tools = {"graphfix diagnose --static": [*GRAPHFIX, "diagnose", "--static", str(model)],
             "onnx.checker full_check": [PY, "-c", CHECKER, str(model)],
             "import onnx": [PY, "-c", FLOOR]}
    figures = side_by_side(tools, repeat)
    mine, floor = figures.pop("graphfix diagnose --static"), figures.pop("import onnx")
    peer = list(figures.values())
    r = ratios(mine, peer)
    floor["time_ratio"] = round(floor["seconds"] / peer[0]["seconds"], 3) \
        if peer[0]["exit"] == 0 and floor["exit"] == 0 else None
    return {"row": "static-llama", "work": f"diagnose --static, Llama-style {_size(work)} with external data",
            "graphfix": mine, "peers": peer, "floor": floor, **r,
            "goals": [goal("time / checker", r["time_ratio"], 1.0), goal("memory / checker", r["memory_ratio"], 1.5)]}


def row_repair(work: Path, repeat: int, name: str, model: Path, what: str,
               limits: tuple[float, float] | None) -> dict:
    """graphfix repair beside onnxsim; `limits` on the time and memory ratios (None: the row has its own goal)."""
    out = work / f"{name}_out"
    out.mkdir(exist_ok=True)
    tools = {"graphfix repair": [*GRAPHFIX, "repair", str(model), "-o", str(out / "graphfix.onnx")],
             **onnxsim_peers(model, out)}
    figures = side_by_side(tools, repeat)
    mine, peers = figures.pop("graphfix repair"), list(figures.values())
    r = ratios(mine, peers)
    ratio_goals = [goal("time / onnxsim", r["time_ratio"], limits[0]),
                   goal("memory / onnxsim", r["memory_ratio"], limits[1])] if limits else []
    return {"row": name, "work": what, "graphfix": mine, "peers": peers, **r,
            "goals": [*ratio_goals, goal("graphfix exit", abs(mine["exit"]), 0)]}


def row_repair_bert_pad(work: Path, repeat: int) -> dict:
    model = work / "bert_pad.onnx"
    result = row_repair(work, repeat, "repair-bert-pad", model,
                        "repair, BERT-base with h[pad] = 0 (GF003 fix + onnxsim + proof)", (1.0, 1.0))
    check = subprocess.run([PY, str(HERE / "models.py"), "check_bert_pad", str(work / "repair-bert-pad_out" /
                            "graphfix.onnx"), f"{model}.npz"], capture_output=True, text=True)
    line = (check.stdout + check.stderr).strip().splitlines()
    result["matches_pytorch"] = check.returncode == 0
    result["pytorch_check"] = line[-1] if line else f"exit {check.returncode}"
    result["goals"].append(goal("differs from PyTorch at 3 sizes", 0 if check.returncode == 0 else 1, 0))
    return result


def row_repair_bert(work: Path, repeat: int) -> dict:
    return row_repair(work, repeat, "repair-bert", work / "bert.onnx", "repair, healthy BERT-base",
                      (0.40, 0.62))


def row_repair_llama(work: Path, repeat: int) -> dict:
    result = row_repair(work, repeat, "repair-llama", work / "llama" / "llama.onnx",
                        f"repair, Llama-style {_size(work)} with external data", None)
    weights_mib = _weights_bytes(work) / (1 << 20)
    per_weight = round(result["graphfix"]["peak_mib"] / weights_mib, 3) if result["graphfix"]["exit"] == 0 else None
    result["weights_mib"] = round(weights_mib, 1)
    result["memory_per_weights"] = per_weight
    result["goals"].insert(0, goal("peak memory / weights' size", per_weight, 1.5))
    return result


def _weights_bytes(work: Path) -> int:
    return sum(f.stat().st_size for f in (work / "llama").glob("llama.onnx*") if f.suffix != ".onnx")


def _size(work: Path) -> str:
    return f"{_weights_bytes(work) / 1e9:.2f} GB"


HEADER = (f"{'row':<17}{'graphfix s':>11}{'peer s':>9}{'time x':>8}{'graphfix MiB':>13}{'peer MiB':>10}"
          f"{'mem x':>8}  goals")


def report(row: dict) -> None:
    """One line for the row (printed as soon as it is measured), and each failed tool's last stderr line."""
    peer = next((p for p in row["peers"] if p["tool"] == row["peer"]), row["peers"][0])
    mine = row["graphfix"]
    goals = "; ".join(f"{g['what']} {_num(g['value'])} <= {g['limit']:g}: {'met' if g['met'] else 'NOT met'}"
                      for g in row["goals"])
    print(f"{row['row']:<17}{mine['seconds']:>11.2f}{peer['seconds']:>9.2f}{_num(row['time_ratio']):>8}"
          f"{mine['peak_mib']:>13.0f}{peer['peak_mib']:>10.0f}{_num(row['memory_ratio']):>8}  {goals}", flush=True)
    if "floor" in row:
        print(f"{'':<17}{row['floor']['seconds']:>11.2f}{'':>9}{_num(row['floor']['time_ratio']):>8}"
              f"{row['floor']['peak_mib']:>13.0f}  ({row['floor']['tool']} alone: the floor of both)", flush=True)
    for tool in [mine, *row["peers"]]:
        if tool["exit"] not in (0, 1):
            print(f"{'':<17}{tool['tool']} exit {tool['exit']}: {tool['note']}", flush=True)


def _num(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(ROWS), help="rows to run, comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each tool; the median is reported")
    parser.add_argument("--llama-layers", type=int, default=8, help="of Qwen3-0.6B's 28 (8: 1.13 GB, 28: 2.38 GB)")
    parser.add_argument("--tiny", action="store_true", help="toy models (seconds, not minutes): checks the rows run")
    parser.add_argument("--work", type=Path, help="where the models are built and kept (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=HERE / "results.json", help="the JSON written")
    args = parser.parse_args()
    global TINY
    TINY = args.tiny
    kind = "tiny" if args.tiny else f"llama{args.llama_layers}"
    work = args.work or Path(tempfile.gettempdir()) / f"graphfix-bench23-{kind}"
    work.mkdir(parents=True, exist_ok=True)
    build_models(work, 2 if args.tiny and args.llama_layers == 8 else args.llama_layers, args.tiny)
    compile_bytecode()
    rows_run = {"static-llama": row_static_llama, "repair-bert-pad": row_repair_bert_pad,
                "repair-bert": row_repair_bert, "repair-llama": row_repair_llama}
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(f"{machine}; median of {args.repeat}; models in {work}\n{HEADER}", flush=True)
    rows = []
    for name in args.only.split(","):  # the JSON is rewritten after each row: a stopped run keeps what it measured
        rows.append(rows_run[name](work, args.repeat))
        report(rows[-1])
        args.out.write_text(json.dumps({"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                                        "machine": machine, "repeat": args.repeat, "tiny": args.tiny,
                                        "llama_layers": None if args.tiny else args.llama_layers, "rows": rows},
                                       indent=2))


if __name__ == "__main__":
    main()
