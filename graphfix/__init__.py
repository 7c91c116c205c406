"""graphfix: diagnose, repair, simplify and prove PyTorch-exported ONNX models.

The Python API mirrors the CLI:

    import graphfix
    findings = graphfix.diagnose("model.onnx")
    result = graphfix.repair("model.onnx", output="fixed.onnx")
"""

import os

from graphfix.core.version import VERSION as __version__  # noqa: F401  (the package's release, for users)

# onnxruntime (1.29+ on Linux) keeps telemetry of every session it creates, model and node names included, in
# ~/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db, a device id beside it and a session id in
# $TMPDIR/.ses, and sends it. Its `disable_telemetry_events()` does not stop that; this variable does, when it is set
# before onnxruntime is first imported (graphfix imports it lazily, and its child processes inherit it). A user who
# sets ORT_DISABLE_TELEMETRY themselves decides; a program that imported onnxruntime before graphfix has its own.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def diagnose(model_or_path, **options):
    """Diagnose a model (path or ModelProto); returns the list of findings."""
    from graphfix.api import diagnose as _diagnose

    return _diagnose(model_or_path, **options)


def repair(model_or_path, **options):
    """Repair a model (path or ModelProto); returns a RepairResult."""
    from graphfix.api import repair as _repair

    return _repair(model_or_path, **options)


def export(model, args, f, **options):
    """Export with torch.onnx, repair, and prove the file against the module; returns an ExportReport."""
    from graphfix.exporting.export import export as _export

    return _export(model, args, f, **options)


def verify(onnx_path, torch_module, example_args, probe_args=None, **options):
    """Compare an ONNX file with the PyTorch module it came from, at several input sizes."""
    from graphfix.exporting.verify import verify as _verify

    return _verify(onnx_path, torch_module, example_args, probe_args=probe_args, **options)
