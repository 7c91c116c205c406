"""GF016 exported-range."""

from __future__ import annotations

from collections.abc import Iterator

from graphfix.analysis.context import RuleContext
from graphfix.analysis.sizes.domain import window_minimums
from graphfix.core.rule import Finding, Rule, Severity
from graphfix.io.torch_ranges import fixed_by_export, guarded_least

FIXED_HINT = ("Re-export with a named dim (`dynamic_shapes={'x': {1: torch.export.Dim('T')}}`): torch.export then "
              "stops at the line that fixes it and names it; keep the size a tensor there (`x.shape[1]`, not "
              "`int(x.shape[1])`). If the model takes that one size, declare it so: `graphfix set-shape`.")
FLOOR_HINT = ("If the model takes only these sizes (a window of its own, a `Dim(..., min=...)` you gave), nothing is "
              "wrong: deploy it there. If it takes smaller ones in PyTorch (`if x.shape[1] >= 14:` and another "
              "path below), export each path apart or write the branch with `torch.cond`, and check the path "
              "taken with `graphfix.verify`.")


class ExportedRange(Rule):
    """Dims a dynamo export declares dynamic that torch.export traced for a narrower range of sizes.

    ## What it does
    Reads the range constraints the dynamo exporter records in the graph's metadata
    (`pkg.torch.export.ExportedProgram.range_constraints`, graphfix.io.torch_ranges): the sizes torch.export
    guarded while it traced. An error where it fixed a dim the inputs declare dynamic (`s27: VR[16, 16]`): the
    model read that size through Python under `Dim.AUTO` (`int(x.shape[1])`), and every number it computed from it
    is the export's. A warning where it traced for sizes from a least one that no window of the graph explains
    (`if x.shape[1] >= 14:` keeps one path, under `T >= 14`, and the graph holds no guard): a Conv's window
    explains its kernel, and torch.export takes every size it derives to be at least 2 (wav2vec2's samples from
    60, where its strided Convs give 2 frames; a ConvNeXt's image from twice its stride). Within a recorded range
    the graph computes what the module does, so graphfix probes inside it, and reads `x[:, 2:14]` there as 12
    long (GF003 and GF006 do not report it). A dynamo export simplified by onnxsim or onnxslim has lost the
    record (they drop the graph's metadata); graphfix keeps it through its own simplification.

    ## Why it breaks deployment
    onnxruntime runs the graph at any size its inputs declare. Past a fixed size the export's numbers stay (a
    `view(B, int(T) // 2, -1)` keeps 8 rows, `F.interpolate(size=int(T) * 2)` 32 frames, `x[:, int(T) - 1]` the
    16th): wrong values or a failure, and since nothing was found to fix, `repair` compared the graph with itself
    and wrote it (helper 153: ten such exports, written with exit 0). Below a guarded least size the path PyTorch
    takes is not in the graph (helper 152).

    ## Example
    ```python
    torch.onnx.export(m, (x,), "m.onnx", dynamo=True, dynamic_shapes={"x": {0: Dim.AUTO, 1: Dim.AUTO}})
    # forward: B, T = x.shape[0], int(x.shape[1]); return h.view(B, T // 2, -1)  -> s27: VR[16, 16]
    ```

    ## Fix safety
    Not repaired: what the module computes at other sizes is not in the graph (re-export, or declare the size
    static with `graphfix set-shape`). A record whose symbols cannot be matched to the inputs' dims one for one
    is not read.
    """

    code = "GF016"
    name = "exported-range"
    severity = Severity.ERROR

    def detect(self, ctx: RuleContext) -> Iterator[Finding]:
        fixed, floors = fixed_by_export(ctx.model), guarded_least(ctx.model)
        inputs = {name: [vi.name for vi in ctx.model.graph.input if any(
            d.dim_param == name for d in vi.type.tensor_type.shape.dim)] for name in {*fixed, *floors}}
        for name, size in fixed.items():
            yield self.finding(
                f"torch.export traced {self._where(name, inputs)} at {name} = {size} only (its record: "
                f"[{size}, {size}]), yet the input declares {name} dynamic: the model read that size through Python "
                "(`int(x.shape[1])` under `Dim.AUTO`), and every number computed from it is the export's; other "
                "sizes run wrong or fail",
                tensors=inputs[name], hint=FIXED_HINT)
        if floors:
            windows = window_minimums(ctx.model, frames=2)  # torch.export takes a size it derives to be 2 or more
            for name, low in floors.items():
                if windows.get(name, 1) < low:
                    yield self.finding(
                        f"torch.export traced {self._where(name, inputs)} for {name} >= {low} only (its record), and "
                        f"no window of the graph (a Conv, a Pool) needs that many: a path the module takes below {low} "
                        "in PyTorch (a branch on the size) may not be in the graph, which declares no such bound. "
                        f"Probed from {low} on, where the graph computes what the module traced",
                        tensors=inputs[name], hint=FLOOR_HINT, severity=Severity.WARNING)

    @staticmethod
    def _where(name: str, inputs: dict[str, list[str]]) -> str:
        return " and ".join(f"'{n}'" for n in inputs[name]) or "the model"
