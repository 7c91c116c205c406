"""The sizes torch.export checked a dynamo export for, as its exporter records them in the graph's metadata.

    exported_ranges(model)   # {"T": (14, None)}: traced under `T >= 14`; {"s27": (16, 16)}: specialised to 16
    guarded_least(model)     # {"T": 14}: the least sizes above torch's default 2, where no dim was fixed
    fixed_by_export(model)   # {"s27": 16}

torch.export guards every size the trace reads: a branch `if x.shape[1] >= 14:` keeps one path under `T >= 14`, and
`int(x.shape[1])` under `Dim.AUTO` fixes T at its export size. The ONNX graph keeps neither guard (its inputs
still declare the dim dynamic), but the dynamo exporter writes the ExportedProgram's range constraints beside it:
`pkg.torch.export.ExportedProgram.range_constraints = "{s77: VR[0, int_oo], s27: VR[14, int_oo]}"`. That record is
the exporter's, not graphfix's reading of the graph: within it the graph computes what the module traced does.

The record names torch's symbols (`s27`). Under `Dim.AUTO` the inputs declare those names; where the user named
the dims (`Dim("T")`, `dynamic_axes`), the exporter renamed them in the inputs only, and the record's input
symbols are matched to the inputs' dim names in order of first appearance, only where both count the same. The
text is matched by a pattern, never evaluated.
"""

from __future__ import annotations

import re

import onnx

from graphfix.core.recent import per_model

RANGES = "pkg.torch.export.ExportedProgram.range_constraints"
# an input's symbol (`u0` is a value's size) and its bounds, of at most 10 digits (a size a probe could allocate)
ENTRY = re.compile(r"\b(s\d+): VR\[(-?\d{1,10}|-int_oo), (-?\d{1,10}|int_oo)\]")
DEFAULT_LEAST = 2  # a `Dim`'s least size unless given (a Llama's `Dim("T", max=4096)`: VR[2, 4096])
LONGEST = 1 << 20  # characters of the record read: a graph's inputs have far fewer dims


@per_model  # the probe and several rules ask of one model
def exported_ranges(model: onnx.ModelProto) -> dict[str, tuple[int, int | None]]:
    """Input dim name -> (least, most) torch.export traced the model for (`most` None: unbounded). Empty where the
    model carries no record, or its symbols cannot be matched to the inputs' dims one for one."""
    text = next((entry.value for entry in model.graph.metadata_props if entry.key == RANGES), "")
    ranges = {name: (max(_bound(low) or 0, 0), _bound(high)) for name, low, high in ENTRY.findall(text[:LONGEST])}
    declared = list(dict.fromkeys(dim.dim_param for vi in model.graph.input
                                  for dim in vi.type.tensor_type.shape.dim if dim.dim_param))
    if not ranges or not declared:
        return {}
    if set(declared) <= ranges.keys():  # `Dim.AUTO`: the inputs declare torch's names
        return {name: ranges[name] for name in declared}
    if len(declared) == len(ranges) and not set(declared) & ranges.keys():  # renamed, one for one
        return dict(zip(declared, ranges.values(), strict=True))
    return {}


def guarded_least(model: onnx.ModelProto) -> dict[str, int]:
    """Input dim name -> the least size torch.export traced for, where above the 2 a `Dim` takes by default (a
    guard: a branch on the size, a `Dim(min=...)`) and the dim was not fixed."""
    return {name: low for name, (low, high) in exported_ranges(model).items()
            if low > DEFAULT_LEAST and (high is None or high > low)}


def fixed_by_export(model: onnx.ModelProto) -> dict[str, int]:
    """Input dim name -> the one size torch.export traced it at (`[16, 16]`), though the input declares it."""
    return {name: low for name, (low, high) in exported_ranges(model).items() if high == low and low > 0}


def _bound(text: str) -> int | None:
    return None if text.endswith("int_oo") else int(text)
