"""Known exporter and onnxruntime error messages: what they mean, which rule detects them, what to change.

Each entry is matched against a whole message (a traceback's last line, an onnxruntime error, a warning).
`graphfix explain TEXT` prints the entry; `graphfix.export()` uses it to explain a failed export.
The patterns come from the public field reports collected for graphfix (FIELD-REPORTS.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownError:
    pattern: re.Pattern[str]
    title: str
    cause: str
    fix: str
    rule: str | None = None  # the graphfix rule that detects it in the exported graph
    reports: str = ""  # public reports where it was seen

    def explain(self) -> str:
        lines = [self.title, "", f"Cause: {self.cause}", f"Fix: {self.fix}"]
        if self.rule:
            lines.append(f"Detected by: {self.rule} (graphfix explain {self.rule}); `graphfix repair` fixes what the "
                         "graph still carries the information for.")
        if self.reports:
            lines.append(f"Seen in: {self.reports}")
        return "\n".join(lines)


def _known(pattern: str, title: str, cause: str, fix: str, rule: str | None = None, reports: str = "") -> KnownError:
    return KnownError(re.compile(pattern, re.I), title, cause, fix, rule, reports)


KNOWN_ERRORS: tuple[KnownError, ...] = (
    _known(r"condition operand cannot broadcast on dim \d+",
           "onnxruntime Where: the condition (mask) does not broadcast against the data",
           "`x[mask] = value` (index_put with a bool mask of lower rank) exported as Where(mask[B,T], value, "
           "x[B,T,C]); ONNX broadcasting aligns the mask with the trailing dims [T,C], not the leading ones.",
           "Write `x = x.masked_fill(mask.unsqueeze(-1), value)`, or let `graphfix repair` unsqueeze the mask.",
           "GF003", "fairseq #5595/#5596 (HuBERT), transformers #10004 (wav2vec2)"),
    _known(r"Attempting to broadcast an axis by a dimension other than 1",
           "onnxruntime: two operands of an elementwise op have different sizes on one axis",
           "Either a lower-rank mask aligned with the wrong axes (index_put), or a size captured as a constant at "
           "export time (a positional table or buffer sliced at the export length) meeting a dynamic dim.",
           "Keep sizes as tensors (no int()/.item()/math on x.shape); index masks with `.unsqueeze(-1)`. "
           "`graphfix diagnose` names the node and says which of the two it is.",
           "GF003", "espnet_onnx #88, APGCC #22, transformers #9044"),
    _known(r"cannot be reshaped to the requested shape",
           "onnxruntime Reshape: the requested shape holds a size baked at export time",
           "A size went through Python while tracing (`int(x.shape[1])`, `.item()`, `.tolist()`, a literal batch), "
           "so the Reshape's target shape is a constant that only fits the export-time input.",
           "Use `x.shape[i]` directly (it stays a tensor while tracing), `-1`, or `x.flatten()`/`unflatten()`; "
           "`graphfix repair` rebuilds the shape from Shape(x) where the graph allows.",
           "GF004", "torchvision #4623/#8534/#8899 (Faster R-CNN), mmdetection #4238"),
    _known(r"Cannot split using values in 'split' attribute",
           "onnxruntime Split: the split sizes were baked from a Python list of per-item sizes",
           "Per-image Python lists (`[len(b) for b in boxes]`) become a constant `split` of the export batch.",
           "Avoid Python lists of sizes in forward(); split with tensor ops or export with the batch you deploy.",
           "GF004", "torchvision #8937"),
    _known(r"MatMul dimension mismatch|left operand cannot broadcast on dim \d+",
           "onnxruntime MatMul: operand shapes disagree",
           "A reshape before the MatMul used a baked size, so the inner dims no longer agree at other sizes.",
           "Keep sizes as tensors in the reshapes feeding the MatMul; run `graphfix diagnose` to find the Reshape.",
           "GF004"),
    _known(r"reshape wildcard -1 has infinite number of solutions",
           "TensorRT: Reshape with -1 on a tensor that can have 0 elements",
           "A dim that can be 0 (no detections) meets a -1 in the target shape; often with a baked `if` on a size.",
           "Avoid -1 next to a possibly-empty dim; compute the shape from Shape(x).", "GF004", "torchvision #8734"),
    _known(r"'Tensor' object has no attribute 'is_integer'",
           "Export: a size is a Tensor while tracing",
           "Under tracing `x.size(i)` is a 0-d Tensor, so `tsz / multiple` is a Tensor and has no is_integer() "
           "(fairseq `pad_to_multiple`). Patching it with float() bakes the branch and the pad amount.",
           "Compute the remainder with tensor ops: `remainder = (-tsz) % multiple`, pad with it unconditionally "
           "(F.pad with 0 is a no-op), and never branch on it in Python.",
           "GF004", "fairseq #5595"),
    _known(r"TracerWarning: Converting a tensor to a Python (integer|boolean|float|index)",
           "Export warning: a value will be baked into the graph as a constant",
           "The traced code turned a tensor into a Python number (int(), float(), bool(), .item(), an `if` on a "
           "tensor); the exporter records the export-time value as a constant.",
           "Keep the value a tensor at the source line the warning names; `graphfix.export()` links each warning "
           "to the graph finding it causes.", "GF004"),
    _known(r"Non concat axis dimensions must match",
           "onnxruntime Concat: inputs disagree outside the concat axis",
           "Typically repeat_interleave with a repeats tensor, which torch's TorchScript exporter unrolls into "
           "Split/Expand/Concat with baked sizes, or another baked size.",
           "Use `k.unsqueeze(2).expand(...).reshape(...)` for uniform repeats; `graphfix repair` rewrites the "
           "unrolled form.", "GF002", "onnxruntime #11672, wenet #2517"),
    _known(r"Can't constant fold SequenceEmpty node",
           "onnxruntime: sequence ops from an old repeat_interleave export",
           "Older torch exported repeat_interleave as Loop{SequenceInsert}+ConcatFromSequence (TensorRT rejects it).",
           "Re-export with a recent torch, or let `graphfix repair` replace it with Unsqueeze/Expand/Reshape.",
           "GF002", "wenet #1630"),
    _known(r"Exporting the operator '?(aten::)?repeat_interleave'? to ONNX opset version \d+ is not supported",
           "Export: repeat_interleave unsupported at this opset (old torch)",
           "The exporter had no symbolic for repeat_interleave at that opset.",
           "Upgrade torch, raise opset_version, or write `x.unsqueeze(d+1).expand(...).flatten(d, d+1)`.", "GF002"),
    _known(r"Exporting the operator '?([\w:]+)'? to ONNX opset version (\d+) is not supported",
           "Export: an operator has no ONNX translation at this opset",
           "torch.onnx has no symbolic function for this aten operator at the requested opset.",
           "Raise opset_version, try `dynamo=True`, or rewrite the call with supported ops."),
    _known(r"maximum protobuf size of 2GB|larger than the 2GiB limit",
           "Export/onnx: the model is over the 2 GB protobuf limit",
           "Protobuf cannot serialize a message over 2 GB; weights must live in external data.",
           "Export with external data (dynamo exporter does it by default; onnx.save(..., save_as_external_data="
           "True)); graphfix writes external data beside its output automatically.",
           reports="pytorch #19277, #132205"),
    _known(r"out of bounds or can not be read in full|size to read: \d+ given file_length",
           "onnxruntime: the external-data file is shorter than its tensors declare",
           "The weights file was truncated (interrupted copy or download) or belongs to another export.",
           "Copy the `.onnx.data` file again; `graphfix diagnose` names the tensor that does not fit.",
           "GF001", "onnxruntime #11848"),
    _known(r"doesn't exist or is not accessible",
           "onnx/onnxruntime: the external-data file is missing",
           "The `.onnx` references weights in a file that is not beside it.",
           "Copy the data file next to the model (same relative location as recorded in the model).",
           "GF001", "onnx #3157"),
    _known(r"Invalid Feed Input Name:?\s*\S+",
           "onnxruntime: an input you feed does not exist in the graph",
           "The exporter pruned an input that the traced forward() did not read (e.g. a streaming cache).",
           "Read every input in forward() (or keep_initializers_as_inputs for constants); check with "
           "`graphfix diagnose --expect-outputs` and the GF001 unused-input findings.",
           "GF001", "wenet #1197, pytorch #62951"),
    _known(r"(too many|not enough) values to unpack \(expected 2",
           "Export: attention cache layout does not match the model code",
           "The cache API changed from one packed tensor to a (key, value) tuple (Wenet PR #2481) but the export "
           "script still passes packed tensors (or an empty cache).",
           "Pass caches in the layout the model expects (Wenet PR #2654); `graphfix stream` checks cache loops "
           "after export.", reports="wenet #2653, #2586, #2635"),
    _known(r"firedasr not support streaming pos encding|not support streaming",
           "Export: the streaming export path does not fit an encoder-decoder (AED) model",
           "FireRedASR's positional encoding has no streaming mode; the streaming export script cannot be used.",
           "Export the encoder and the decoder separately (or export once and split with `graphfix extract`), and "
           "drive decoding yourself.", reports="wenet #2697"),
    _known(r"GuardOnDataDependentSymNode|Could not guard on data-dependent expression|"
           r"Could not extract specialized integer from data-dependent expression",
           "Export (dynamo): Python control flow or a Python number depends on tensor values",
           "torch.export traces symbolically; an `if` on a tensor value, `.item()`, `int(tensor)` or `.tolist()` "
           "needs the data, which does not exist at export time.",
           "Use tensor ops instead of Python branches (`torch.where`, `torch.cond`), keep values as tensors, or "
           "export with `dynamo=False` (which bakes the export-time value: check it with graphfix)."),
    _known(r"Constraints violated|specialized it to be a constant|but your code specialized",
           "Export (dynamo): a dim marked dynamic was specialized to a constant",
           "Code in forward() fixes the dim (a Python int of a size, an assert on it, a shape-dependent branch), "
           "so torch.export cannot keep it dynamic.",
           "Remove the code that forces a specific size, or declare the dim with the range the code allows "
           "(`torch.export.Dim('T', min=2, max=4096)`).", "GF004"),
    _known(r"Failed to convert the exported program to an ONNX model|No decompositions registered|"
           r"ONNX operator.*is not supported|not implemented for ONNX",
           "Export (dynamo): an operator of the exported program has no ONNX translation",
           "torch.export succeeded but the ONNX translation of one aten operator is missing at this opset.",
           "Raise opset_version, rewrite the call with common ops, or try `dynamo=False`."),
    _known(r"Failed to export the model with torch\.export",
           "Export (dynamo): torch.export could not capture the model",
           "Step 1 of the dynamo exporter (torch.export) failed; the exception summary says on which construct.",
           "See https://pytorch.org/docs/stable/generated/exportdb/index.html for the construct, or try "
           "`dynamo=False` and check the result with graphfix."),
    _known(r"Error parsing message with type 'onnx\.ModelProto'|INVALID_PROTOBUF|DecodeError",
           "The file is not a valid ONNX protobuf",
           "A damaged or truncated download, or a Git LFS pointer saved as model.onnx.",
           "Fetch the file again (`git lfs pull` for LFS repositories); `graphfix diagnose` says which it is."),
)


def explain_message(text: str) -> KnownError | None:
    """The first known error whose pattern occurs in `text`."""
    for known in KNOWN_ERRORS:
        if known.pattern.search(text):
            return known
    return None
