"""onnxsim, bounded: in a child process, with a time limit, refused when it grows the model or renames I/O.

onnxsim can crash the interpreter, hang on huge tensors and grow models (folding Tile or ConstantOfShape into
large constants). So it runs in a child process with a timeout, and its result is checked before it replaces
anything. On any failure the input is kept and the reason is returned in one line. The child is a
`python -P -m graphfix.pipeline.simplify --serve` (`OnnxsimChild`: one per process, serving every job, started by
`repair` before it loads the model so that its imports overlap the load), never a fork: the repair pipeline has
onnxruntime sessions and writer threads running meanwhile, and a forked child inherits their locks but not their
threads (onnxsim's own onnxruntime sessions then hang). The model it gets is the light one, a few megabytes.

Weights are never sent to the child when they are external, stubs of a light model (see `graphfix.io.weights`),
or too many for one protobuf: such initializers are *lifted* into graph inputs of the same name, type and shape,
so onnxsim sees the graph's structure only (on BERT-base 0.1 s of work instead of 2 s of copying 435 MB in and
out), and are put back afterwards as they were. Constant folding loses nothing by it: weights a foldable node
reads are never stubs. What onnxsim can then not do is fuse values into those weights (MatMul+Add into Gemm,
BatchNorm into Conv); onnxruntime performs the same fusions itself when it loads the model.

The child imports onnxsim with torch and sympy hidden: onnxsim's package imports torch when it is installed
(1.5 s) and sympy for its size report (0.8 s of the child's 3 s of CPU), though simplification uses neither.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from graphfix.core.children import child_environment, python_module_argv
from graphfix.io.budgets import bound_data, probe_memory_budget
from graphfix.io.external_data import has_external_data, tensor_nbytes
from graphfix.io.protos import lift_initializers
from graphfix.io.staging import scratch_dir

PROTOBUF_SAFE_BYTES = 1_500_000_000  # above this much inline weight, lift initializers so the child gets less
LIFT_MIN_BYTES = 1 << 20  # when lifting for size, only initializers at least this big
GROWTH_SLACK_BYTES = 256 << 10  # tiny models may grow by this much (value_info, small folded constants)


@dataclass
class SimplifyResult:
    model: onnx.ModelProto  # simplified model, or the input unchanged when skipped/failed
    applied: bool
    message: str  # '' or why it was skipped / failed / reverted, one line


class OnnxsimChild:
    """`python -P -m graphfix.pipeline.simplify --serve` (no module of the working folder): imports onnxsim (most
    of its start-up), then simplifies the jobs its stdin names (two lines each, source and target), one reply line
    each on its own channel, until stdin closes (`close()`, or the parent's death). A child that ran past its time is
    killed, one that died is replaced: its next job gets a fresh one.

    One child serves a whole process (`shared()`): `repair` takes it before loading the model, so that its
    imports use the core the load leaves idle, and a batch of repairs (or a test suite) starts onnxsim once."""

    _shared: OnnxsimChild | None = None
    _lock = threading.Lock()  # one job at a time per child

    def __init__(self) -> None:
        self.owner = os.getpid()  # a forked process must not write to its parent's child
        self.process = subprocess.Popen(python_module_argv("graphfix.pipeline.simplify", "--serve"),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True, env=child_environment())  # nothing from the working folder

    @classmethod
    def shared(cls) -> OnnxsimChild:
        """The process's child, started now unless one of this process is alive."""
        with cls._lock:
            child = cls._shared
            if child is None or child.owner != os.getpid() or child.process.poll() is not None:
                child = cls._shared = cls()
                atexit.register(child.close)
            return child

    def run(self, source: Path, target: Path, timeout_s: float) -> tuple[int, str]:
        """(status, error line) of the job; raises subprocess.TimeoutExpired after killing the child. A job cut
        short (`--timeout`, Ctrl-C, a stop) kills the child too: it went on folding constants for minutes after
        graphfix had ended (helper 63), and its late reply would have answered the next job."""
        with self._lock:
            try:
                return self._run(source, target, timeout_s)
            except BaseException:
                self.close()
                raise

    def _run(self, source: Path, target: Path, timeout_s: float) -> tuple[int, str]:
        try:
            self.process.stdin.write(f"{source}\n{target}\n")
            self.process.stdin.flush()
        except OSError:  # it died before the job (its imports failed): say how
            self.close()
            return self.process.returncode or 1, f"onnxsim's process exited with status {self.process.returncode}"
        with selectors.DefaultSelector() as selector:  # poll, not select(): a descriptor past 1,024 is waited on too
            selector.register(self.process.stdout, selectors.EVENT_READ)  # (held.py may raise the open-file limit)
            ready = selector.select(timeout_s)
        reply = self.process.stdout.readline() if ready else None
        if reply is None:
            self.close()
            raise subprocess.TimeoutExpired("onnxsim", timeout_s)
        if not reply:  # it died on the job (a crash in onnxsim's C++ core)
            self.close()
            return self.process.returncode or 1, f"onnxsim's process exited with status {self.process.returncode}"
        answer = json.loads(reply)
        return answer["status"], answer["error"]

    def close(self) -> None:
        """Stop the child if it still runs and reap it; closing twice is harmless."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()


def simplify(
    model: onnx.ModelProto,
    *,
    base_dir: Path | None = None,
    timeout_s: float = 120.0,
    max_growth: float = 1.25,
    child: OnnxsimChild | None = None,
) -> SimplifyResult:
    """Simplify `model` with onnxsim in a child process; keep the input (and say why) when anything fails.

    `base_dir` is where the model's external data lives; it is only needed to tell the caller the weights stay
    there (they are never read here). `child` is the onnxsim process to use (default: the shared one)."""
    lifted = _liftable_initializers(model)
    light = lift_initializers(model, lifted)
    if has_external_data(light):  # onnx.load in the child would resolve its location itself
        return SimplifyResult(model, False, "simplification skipped: a tensor outside the graph's initializers keeps "
                                            "its values in external data")
    outcome = _run_onnxsim_child(light, timeout_s, child or OnnxsimChild.shared())
    del light  # the child has its own copy; holding ours would double the peak memory
    if isinstance(outcome, str):
        return SimplifyResult(model, False, outcome)
    sent, received = outcome
    simplified = _restore_initializers(received, model, lifted)
    if not simplified.graph.metadata_props:  # onnxsim drops them, the exporter's record among them (GF016 reads it)
        simplified.graph.metadata_props.extend(model.graph.metadata_props)
    problem = _why_unacceptable(model, simplified, sent, received, max_growth)
    if problem:
        return SimplifyResult(model, False, problem)
    return SimplifyResult(simplified, True, "")


def _liftable_initializers(model: onnx.ModelProto) -> set[str]:
    """Initializers onnxsim must not see: external ones always, big inline ones when the model is huge."""
    external = {t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    inline = [t for t in model.graph.initializer if t.data_location != TensorProto.EXTERNAL]
    if sum(tensor_nbytes(t) for t in inline) <= PROTOBUF_SAFE_BYTES:
        return external
    return external | {t.name for t in inline if tensor_nbytes(t) >= LIFT_MIN_BYTES}


def _restore_initializers(
    simplified: onnx.ModelProto, original: onnx.ModelProto, names: set[str]
) -> onnx.ModelProto:
    """Turn the lifted graph inputs back into the original initializers (external references intact)."""
    if not names:
        return simplified
    used = {name for node in simplified.graph.node for name in node.input}
    used |= {o.name for o in simplified.graph.output}
    inputs = [i for i in simplified.graph.input if i.name not in names or _was_graph_input(original, i.name)]
    del simplified.graph.input[:]
    simplified.graph.input.extend(inputs)
    simplified.graph.initializer.extend(
        t for t in original.graph.initializer if t.name in names and t.name in used
    )
    return simplified


def _was_graph_input(model: onnx.ModelProto, name: str) -> bool:
    return any(i.name == name for i in model.graph.input)


def _run_onnxsim_child(light: onnx.ModelProto, timeout_s: float,
                       child: OnnxsimChild) -> tuple[int, onnx.ModelProto] | str:
    """(bytes sent, onnxsim's result), or one line saying why there is none."""
    with scratch_dir("sim") as tmp:
        source, target = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        try:
            onnx.save_model(light, str(source))
        except ValueError as exc:  # still over 2 GB after lifting (huge Constant nodes)
            return f"simplification skipped: model too large to serialize ({exc})"
        try:
            status, error = child.run(source, target, timeout_s)
        except subprocess.TimeoutExpired:
            return f"simplification skipped: onnxsim did not finish within {timeout_s:g} s"
        if status != 0 or not target.exists():
            return f"simplification failed, kept the unsimplified graph: {error or f'status {status}'}"
        return source.stat().st_size, onnx.load_model(str(target), load_external_data=False)


def _why_unacceptable(
    original: onnx.ModelProto,
    simplified: onnx.ModelProto,
    sent: int,
    received: onnx.ModelProto,
    max_growth: float,
) -> str:
    """'' when the simplified model may replace the original, else the reason it was reverted."""
    before, after = sent, received.ByteSize()
    if after > max_growth * before and after - before > GROWTH_SLACK_BYTES:
        return (
            f"simplification reverted: onnxsim grew the model from {before} to {after} bytes "
            f"(limit {max_growth:g}x), likely by folding Tile/ConstantOfShape into large constants"
        )
    if _io_names(original) != _io_names(simplified):
        return "simplification reverted: onnxsim changed the graph input/output names or order"
    if _input_shapes(original) != _input_shapes(simplified):
        return "simplification reverted: onnxsim changed graph input shapes (dynamic dims must stay dynamic)"
    return ""


def _io_names(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    return inputs, [o.name for o in model.graph.output]


def _input_shapes(model: onnx.ModelProto) -> list[list[int | str]]:
    initializers = {t.name for t in model.graph.initializer}
    return [
        [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
        if i.name not in initializers
    ]


def _serve() -> int:
    """Entry point of the child process (see OnnxsimChild): replies go to the original stdout, one JSON line
    per job; whatever onnxsim prints goes to stderr."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    with contextlib.suppress(OSError):
        os.nice(10)  # started ahead of need: the parent's work comes first
    try:
        onnxsim, failed = _import_onnxsim(), ""
    except Exception as exc:
        onnxsim, failed = None, _one_line(exc)
    _bound_memory()
    while (source := sys.stdin.readline().rstrip("\n")) and (target := sys.stdin.readline().rstrip("\n")):
        status, error = (1, failed) if onnxsim is None else _simplify_file(onnxsim, source, target)
        replies.write(json.dumps({"status": status, "error": error}) + "\n")
    return 0


def _bound_memory() -> None:
    """Hold this child's data to what it holds now plus the probe's memory budget: the model it gets is the light
    one, without weights, so a constant onnxsim folds past that is a bomb (`Relu` beside `ConstantOfShape([10**9])`,
    219 bytes, made it take 4 GB). Folding it then fails, and the rest goes on."""
    bound_data(probe_memory_budget())


def _simplify_file(onnxsim, source: str, target: str) -> tuple[int, str]:
    try:
        simplified, ok = _simplify_with_fallback(onnxsim, onnx.load_model(source))
    except Exception as exc:
        return 1, _one_line(exc)
    if not ok:
        return 2, "onnxsim's own check failed"
    onnx.save_model(simplified, target)
    return 0, ""


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _simplify_with_fallback(onnxsim, model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    try:
        return onnxsim.simplify(model, skip_shape_inference=False)
    except Exception:  # shape inference crashes on some valid models; try once without it
        return onnxsim.simplify(model, skip_shape_inference=True)


HIDDEN_FROM_ONNXSIM = ("torch", "sympy")  # optional imports of onnxsim that `simplify` never uses


def _import_onnxsim():
    """onnxsim, imported with torch and sympy hidden: its package imports torch when torch is installed (1.5 s
    and 200 MB here) and sympy for symbolic sizes in its model report (0.8 s), although `simplify` uses neither.
    Only the child process does this; where onnxsim needs them after all, it is imported again normally."""
    hidden = [name for name in HIDDEN_FROM_ONNXSIM if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # makes `import torch` raise ImportError, as on a machine without torch
    try:
        import onnxsim
    except ImportError:
        for name in [m for m in sys.modules if m == "onnxsim" or m.startswith("onnxsim.")]:
            del sys.modules[name]
        for name in hidden:
            del sys.modules[name]
        hidden = []
        import onnxsim
    finally:
        for name in hidden:
            del sys.modules[name]
    return onnxsim


if __name__ == "__main__":
    sys.exit(_serve())
