"""Known exporter and onnxruntime error messages: what they mean, which rule detects them, what to change.

Each entry is matched against a whole message (a traceback's last line, an onnxruntime error, a warning).
`graphfix explain TEXT` prints the entry; `graphfix.export()` uses it to explain a failed export.
Entries that a rule detects live on the rule (`Rule.knowledge`); the ones here belong to no rule.
The patterns come from the public field reports collected for graphfix (FIELD-REPORTS.md).
"""

from __future__ import annotations

import dataclasses

from graphfix.core.rule import KnownError, known

GENERAL: tuple[KnownError, ...] = (
    known(r"Exporting the operator '?([\w:]+)'? to ONNX opset version (\d+) is not supported",
          "Export: an operator has no ONNX translation at this opset",
          "torch.onnx has no symbolic function for this aten operator at the requested opset.",
          "Raise opset_version, try `dynamo=True`, or rewrite the call with supported ops."),
    known(r"maximum protobuf size of 2GB|larger than the 2GiB limit",
          "Export/onnx: the model is over the 2 GB protobuf limit",
          "Protobuf cannot serialize a message over 2 GB; weights must live in external data.",
          "Export with external data (dynamo exporter does it by default; onnx.save(..., save_as_external_data="
          "True)); graphfix writes external data beside its output automatically.",
          reports="pytorch #19277, #132205"),
    known(r"(too many|not enough) values to unpack \(expected 2",
          "Export: attention cache layout does not match the model code",
          "The cache API changed from one packed tensor to a (key, value) tuple (Wenet PR #2481) but the export "
          "script still passes packed tensors (or an empty cache).",
          "Pass caches in the layout the model expects (Wenet PR #2654); `graphfix stream` checks cache loops "
          "after export.",
          reports="wenet #2653, #2586, #2635"),
    known(r"firedasr not support streaming pos encding|not support streaming",
          "Export: the streaming export path does not fit an encoder-decoder (AED) model",
          "FireRedASR's positional encoding has no streaming mode; the streaming export script cannot be used.",
          "Export the encoder and the decoder separately (or export once and split with `graphfix extract`), and "
          "drive decoding yourself.",
          reports="wenet #2697"),
    known(r"GuardOnDataDependentSymNode|Could not guard on data-dependent expression|"
          r"Could not extract specialized integer from data-dependent expression",
          "Export (dynamo): Python control flow or a Python number depends on tensor values",
          "torch.export traces symbolically; an `if` on a tensor value, `.item()`, `int(tensor)` or `.tolist()` "
          "needs the data, which does not exist at export time.",
          "Use tensor ops instead of Python branches (`torch.where`, `torch.cond`), keep values as tensors, or "
          "export with `dynamo=False` (which bakes the export-time value: check it with graphfix)."),
    known(r"Failed to convert the exported program to an ONNX model|No decompositions registered|"
          r"ONNX operator.*is not supported|not implemented for ONNX",
          "Export (dynamo): an operator of the exported program has no ONNX translation",
          "torch.export succeeded but the ONNX translation of one aten operator is missing at this opset.",
          "Raise opset_version, rewrite the call with common ops, or try `dynamo=False`."),
    known(r"Failed to export the model with torch\.export",
          "Export (dynamo): torch.export could not capture the model",
          "Step 1 of the dynamo exporter (torch.export) failed; the exception summary says on which construct.",
          "See https://pytorch.org/docs/stable/generated/exportdb/index.html for the construct, or try "
          "`dynamo=False` and check the result with graphfix."),
    known(r"Error parsing message with type 'onnx\.ModelProto'|INVALID_PROTOBUF|DecodeError",
          "The file is not a valid ONNX protobuf",
          "A damaged or truncated download, or a Git LFS pointer saved as model.onnx.",
          "Fetch the file again (`git lfs pull` for LFS repositories); `graphfix diagnose` says which it is."),
)


def known_errors() -> list[KnownError]:
    """Every known error: the registered rules' own (in code order, each naming its rule), then the rest."""
    from graphfix.core.registry import load_rules

    owned = [dataclasses.replace(entry, rule=rule.code) for rule in load_rules()[0] for entry in rule.knowledge]
    return [*owned, *GENERAL]


MAX_EXPLAINED = 4096  # an error's first lines say what it is; a pattern's `.*` over more costs its square


def explain_message(text: str) -> KnownError | None:
    """The first known error whose pattern occurs in `text`'s first MAX_EXPLAINED characters (helper 108: 117 KB
    took 10 s)."""
    text = text[:MAX_EXPLAINED]
    return next((entry for entry in known_errors() if entry.pattern.search(text)), None)
