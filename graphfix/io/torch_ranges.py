"""The sizes torch.export checked a dynamo export for, as its exporter records them in the graph's metadata.

    exported_ranges(model)   # {"T": (14, None)}: traced under `T >= 14`; {"s27": (16, 16)}: specialised to 16
    guarded_least(model)     # {"T": 14}: the least sizes above torch's default 2, where no dim was fixed
    fixed_by_export(model)   # {"s27": 16}

torch.export guards every size the trace reads: a branch `if x.shape[1] >= 14:` keeps one path under `T >= 14`, and
`int(x.shape[1])` under `Dim.AUTO` fixes T at its export size. The ONNX graph keeps neither guard (its inputs
still declare the dim dynamic), but the dynamo exporter writes the ExportedProgram's range constraints beside it:
`pkg.torch.export.ExportedProgram.range_constraints = "{s77: VR[0, int_oo], s27: VR[14, int_oo]}"`. That record is
the exporter's, not graphfix's reading of the graph: within it the graph computes what the module traced does.

The record names torch's symbols (`s27`, a derived `2*s27`). Under `Dim.AUTO` the inputs declare those names;
where the user named a dim (`Dim("B")`, `dynamic_axes`), the exporter renamed it in the inputs only, and the
record's symbols left are matched to the names left in order of first appearance, only where both count the same
and each is a symbol of its own (helper 154: a derived `2*s27` among them, or two batches torch kept apart under
one name, would pair the wrong ones). The text is matched by a pattern, never evaluated. onnxsim and onnxslim drop
the record; graphfix keeps it through its own simplification.
"""

from __future__ import annotations

import re

import onnx

from graphfix.core.recent import per_model

RANGES = "pkg.torch.export.ExportedProgram.range_constraints"
# one entry: a symbol (`s27`), a derived dim an input declares (`2*s27`) or a value's size (`u0`), and its bounds of
# at most 10 digits each; an entry starts the record or follows ", "
ENTRY = re.compile(r"(?:^\{|, )([A-Za-z0-9_*+\-/ ()]{1,64}?): VR\[(-?\d{1,10}|-int_oo), (-?\d{1,10}|int_oo)\]")
SYMBOL = re.compile(r"s\d+")  # an input's own symbol, as torch.export names it
DEFAULT_LEAST = 2  # a `Dim`'s least size unless given (a Llama's `Dim("T", max=4096)`: VR[2, 4096])
MOST_LEAST = 1_000_000  # a least size past it is no probe floor (a record's text is the model's)
LONGEST = 1 << 20  # characters of the record read: a graph's inputs have far fewer dims


@per_model  # the probe and several rules ask of one model
def exported_ranges(model: onnx.ModelProto) -> dict[str, tuple[int, int | None]]:
    """Input dim name -> (least, most) torch.export traced the model for (`most` None: unbounded). Empty where the
    model carries no record, or its symbols cannot be matched to the inputs' dims one for one."""
    text = next((entry.value for entry in model.graph.metadata_props if entry.key == RANGES), "")
    ranges = {name: (max(_bound(low) or 0, 0), _bound(high)) for name, low, high in ENTRY.findall(text[:LONGEST])}
    declared = list(dict.fromkeys(dim.dim_param for vi in model.graph.input
                                  for dim in vi.type.tensor_type.shape.dim if dim.dim_param))
    found = {name: ranges[name] for name in declared if name in ranges}  # `Dim.AUTO` keeps torch's names
    named = [name for name in declared if name not in found]  # renamed by the user (`Dim("B")`, `dynamic_axes`)
    left = [key for key in ranges if key not in found and not key.startswith("u")]
    if named and len(named) == len(left) and all(SYMBOL.fullmatch(key) for key in left) \
            and all(name.isidentifier() for name in named):  # a declared `2*h` is no symbol of its own
        found.update(zip(named, (ranges[key] for key in left), strict=True))
    return found


def guarded_least(model: onnx.ModelProto) -> dict[str, int]:
    """Input dim name -> the least size torch.export traced for, where above the 2 a `Dim` takes by default (a
    guard: a branch on the size, a `Dim(min=...)`) and the dim was not fixed."""
    return {name: low for name, (low, high) in exported_ranges(model).items()
            if DEFAULT_LEAST < low <= MOST_LEAST and (high is None or high > low)}


def fixed_by_export(model: onnx.ModelProto) -> dict[str, int]:
    """Input dim name -> the one size torch.export traced it at (`[16, 16]`), though the input declares it."""
    return {name: low for name, (low, high) in exported_ranges(model).items() if high == low and low > 0}


def _bound(text: str) -> int | None:
    return None if text.endswith("int_oo") else int(text)
