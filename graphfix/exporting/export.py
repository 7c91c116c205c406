"""`graphfix.export()`: export with torch.onnx, repair, and prove the written file against the module.

    report = graphfix.export(model, (x,), "model.onnx", input_names=["x"], dynamic_axes={"x": {0: "B", 1: "T"}})
    assert report.ok, report.summary()

`ok` is True only when the written file ran in onnxruntime and matched the module at the export size and at
the probe sizes. TracerWarnings ("Converting a tensor to a Python integer ...") are kept with their source
lines and linked to the graph findings they explain. An export that raises is re-raised as an ExportError
that explains it from graphfix's knowledge base and names the user's source line.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphfix.core.errors import GraphfixError
from graphfix.core.rule import Finding, Safety
from graphfix.exporting.probes import (
    default_probes,
    dim_names,
    far_probes,
    few_positions,
    front_end_strides,
    growing_dims,
    requested_dynamic_dims,
)
from graphfix.exporting.tracing import TracerNote, explain_failure, link_notes, tracer_notes
from graphfix.exporting.verify import SizeCheck, verify
from graphfix.io.staging import scratch_dir
from graphfix.pipeline.engine import AppliedFix


class ExportError(GraphfixError):
    """torch.onnx.export raised; the message explains why and where. The original exception is chained."""


@dataclass
class ExportReport:
    path: Path
    findings: list[Finding]
    repairs: list[AppliedFix]
    checks: list[SizeCheck]
    tracer_warnings: list[TracerNote] = field(default_factory=list)
    causes: dict[int, list[TracerNote]] = field(default_factory=dict)  # index in findings -> warnings behind it
    status: str = "unchanged"  # of the repair: repaired | unchanged | failed
    error: str | None = None
    skipped: list[str] = field(default_factory=list)  # probe sizes the module itself rejected, and why
    refitted: list[str] = field(default_factory=list)  # constants rebuilt from traces at other sizes (refit)
    refit_notes: list[str] = field(default_factory=list)  # what the traces could not settle, or how they did

    @property
    def ok(self) -> bool:
        """Every check ran and matched; and where the module rejected probe sizes, two sizes or more were checked
        (the example's size alone proves nothing about the others)."""
        enough = _two_sizes(self.checks) or not self.skipped
        return self.error is None and self.status != "failed" and bool(self.checks) and \
            all(c.ok for c in self.checks) and enough

    def summary(self) -> str:
        lines = [f"{self.path}: {'ok' if self.ok else 'NOT OK'} (repair {self.status})"]
        for check in self.checks:
            worst = max((o.max_abs for o in check.outputs), default=0.0)
            shapes = "; ".join(f"output {o.name} is {o.shape_onnx}, torch's {o.shape_torch}" for o in check.outputs
                               if o.shape_onnx != o.shape_torch)
            lines.append(f"  {check.input_shapes}: {'ok' if check.ok else 'FAIL'}"
                         f"{' ' + check.error if check.error else ''}"
                         + (f" {shapes}" if shapes else f" max abs err {worst:.3g}"))
        lines.extend(f"  not checked: {reason}" for reason in self.skipped)
        lines.extend(f"  rebuilt from traces at other sizes: {line}" for line in self.refitted)
        lines.extend(f"  traces: {note}" for note in self.refit_notes)
        for index, finding in enumerate(self.findings):
            lines.append(f"  {finding.severity.value} {finding.rule} [{', '.join(finding.nodes[:2])}]: "
                         f"{finding.message}")
            lines.extend(f"      caused by {note}" for note in self.causes.get(index, []))
        if not self.ok:  # the values a failing file may keep, where no finding names them
            linked = {id(note) for notes in self.causes.values() for note in notes}
            lines.extend(f"  the trace turned a value into a constant at {note}" for note in self.tracer_warnings
                         if id(note) not in linked)
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)


def _exporter(exporter: str | None, export_kwargs: dict[str, Any]) -> str:
    """The exporter asked for, by name or by torch.onnx.export's `dynamo` flag (taken out of `export_kwargs`)."""
    if exporter not in (None, "torchscript", "dynamo"):
        raise GraphfixError(f"exporter must be 'torchscript' or 'dynamo', not '{exporter}'")
    if "dynamo" not in export_kwargs:
        return exporter or "torchscript"
    flagged = "dynamo" if export_kwargs.pop("dynamo") else "torchscript"
    if exporter not in (None, flagged):
        raise GraphfixError(f"exporter='{exporter}' and dynamo={flagged == 'dynamo'} ask for different exporters")
    return flagged


def export(model, args, f, *, input_names=None, output_names=None, dynamic_axes=None, dynamic_shapes=None,
           exporter: str | None = None, opset_version: int | None = None, probe_args=None,
           **export_kwargs: Any) -> ExportReport:
    """Export `model(*args, **kwargs)` to `f`, repair the graph, and prove the file against the module. `args` and
    `kwargs` are what torch.onnx.export takes: tensors, tuples, lists and dicts of them. `exporter` is "torchscript"
    (the default) or "dynamo"; torch.onnx.export's own `dynamo=True/False` is taken for it."""
    import torch

    from graphfix.api import repair
    from graphfix.exporting.verify import split_call
    from graphfix.validate import ValidationOptions

    exporter = _exporter(exporter, export_kwargs)
    args = args if isinstance(args, tuple) else (args,)
    call = split_call(args, export_kwargs.get("kwargs"))
    destination = Path(f)
    with scratch_dir("export") as scratch:
        raw = Path(scratch) / destination.name
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                torch.onnx.export(model, args, str(raw), input_names=input_names, output_names=output_names,
                                  dynamic_axes=dynamic_axes, dynamic_shapes=dynamic_shapes,
                                  dynamo=exporter == "dynamo", opset_version=opset_version, **export_kwargs)
            except Exception as exc:
                raise ExportError(explain_failure(exc)) from exc
        notes = tracer_notes(caught, model)
        requested = requested_dynamic_dims(model, call[0], input_names, dynamic_axes, dynamic_shapes)
        flat = all(isinstance(arg, torch.Tensor) for arg in call[0]) and not call[1]
        given = probe_args is not None  # the caller's own sizes: inputs the module takes, lengths that fit
        names = dim_names(input_names, dynamic_axes)
        grows = growing_dims(requested, names)  # dims an unsafe guess must also hold at far past the probes
        far = far_probes(call, grows, names) if grows and flat else []
        if probe_args is None and requested and flat:  # nested or keyword arguments: verify() resizes by dims
            probe_args = default_probes(call, requested, names, front_end_strides(raw, call, input_names))
        proof_far = [] if given else few_positions(far, grows, call[0])  # the far sizes the default proof takes too
        near_seen: set[str] = set()  # the shapes the probes checked, without the far sizes

        trace_shapes = _trace_shapes(raw, call, input_names)  # the raw export read once, for every repair below
        unsettled: list[str] = []  # why an unsafe guess the probes accepted was not kept

        def repaired(unsafe: bool, output: Path = destination, source: Path = raw):
            # The example args are the export-time sizes; the PyTorch module is the reference here (evidence
            # `torch`): the repair needs only to run, and verify() compares it with the module. The default
            # proof also takes the far sizes of few positions: a module that changes past 3 times the example's
            # lengths (a count of 48-frame chunks exported at 12) is wrong there, and its file was ok (helper 160).
            result = repair(source, output=output, trace_shapes=trace_shapes, unsafe_fixes=unsafe,
                            validation=ValidationOptions(require="runs"))
            if result.output is None:
                return result, None
            checked = verify(output, model, args, probe_args=probe_args, kwargs=export_kwargs.get("kwargs"),
                             input_names=input_names)
            near_seen.update(str(c.input_shapes) for c in checked.checks)
            if proof_far:
                beyond = verify(output, model, args, probe_args=proof_far, kwargs=export_kwargs.get("kwargs"),
                                input_names=input_names)
                checked.checks += [c for c in beyond.checks if str(c.input_shapes) not in near_seen]
                checked.skipped += beyond.skipped
            return result, checked

        def settled(checked, output: Path = destination) -> bool:
            # An unsafe fix is a guess the graph left open: the module settles it at the probes, and where a guess
            # and the module part only further out (a mask window wider than the probes), at 5 and 8 times the
            # example's lengths too. Where no such size can be made or run, the guess is not kept.
            if not _settles(checked) or not grows:
                return _settles(checked)
            if not far:
                unsettled.append("sizes far past the probes, where an unsafe fix's guess must also hold: none could "
                                 "be made (keyword or nested arguments, or over the size budget); not kept")
                return False
            beyond = verify(output, model, args, probe_args=far, kwargs=export_kwargs.get("kwargs"),
                            input_names=input_names)
            ran = [c for c in beyond.checks if str(c.input_shapes) not in near_seen]
            where = "5 and 8 times the example's lengths (and a multiple of 16), where an unsafe fix's guess must hold"
            if not all(c.ok for c in beyond.checks):
                unsettled.append(f"{where}: it differs from the module there; not kept")
                return False
            if not ran:  # made-up inputs the module rejects (lengths whose maximum must be the length)
                unsettled.append(f"{where}: the module rejected them; " + (
                    "kept on the probe sizes given" if given else "not kept (give `probe_args` far past the example)"))
                return given
            return True

        result, verification = repaired(unsafe=False)
        findings = result.findings_before  # the export's own, which a refitted source no longer shows
        if verification is not None and not verification.ok and _unsafe_left(result):
            # A constant equal to an export size is only a guess in the graph (it may be the model's own), so its
            # fix is unsafe; here the module can settle it: keep the unsafe repair only if it then matches.
            retry, checked = repaired(unsafe=True)
            result, verification = (retry, checked) if settled(checked) else repaired(unsafe=False)
        elif verification is None and _unsafe_left(result):
            # Nothing was written: the safe fixes alone leave a failing model. The unsafe repair is tried beside
            # the scratch export, so that a failed try never reaches `f`; written there only if it matches.
            trial = _fresh(scratch) / destination.name
            _, checked = repaired(unsafe=True, output=trial)
            if settled(checked, trial):
                result, verification = repaired(unsafe=True)  # the same repair where asked, checked again
        refitted = None
        if (verification is None or not verification.ok) and exporter == "torchscript" and flat and probe_args:
            # The graph did not settle it; traces of the module at other sizes may (graphfix.exporting.refit).
            refitted = _refitted(model, call, raw, [*probe_args, *proof_far], Path(scratch),
                                 input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                                 opset_version=opset_version, **export_kwargs)
            kept = _kept_refit(refitted, Path(scratch), destination.name, repaired, verification)
            if kept is not None:
                result, verification = kept
    report = ExportReport(destination, findings, result.applied, [], notes, status=result.status, error=result.error,
                          skipped=list(unsettled))
    if refitted is not None:
        report.refitted, report.refit_notes = refitted.rebuilt, refitted.notes
    report.causes = link_notes(findings, notes)
    if result.output is None:
        report.error = report.error or "the repaired model was not written"
        return report
    report.checks, report.skipped = verification.checks, [*verification.skipped, *unsettled]
    return report


def _kept_refit(refitted, scratch: Path, name: str, repaired, current):
    """The repair of the refitted export where asked, and its check, if a trial beside the scratch export matched
    the module at two sizes or more, and wherever the file without it did; else None, and the refit's notes say
    why. Kept even where it misses some sizes (a branch the trace froze at other sizes) when it matches at more
    than the file without it: the report then stays not ok, and the better file is written."""
    if refitted.model is None:
        return None
    import onnx

    # beside the raw export: its external data, which the refit never loaded, stays where its locations say
    source = Path(tempfile.mkstemp(dir=scratch, prefix="refit-", suffix=".onnx")[1])
    onnx.save_model(refitted.model, str(source))
    _, checked = repaired(unsafe=False, output=_fresh(scratch) / name, source=source)
    if not _settles(checked) and not _better(checked, current):
        refitted.notes.append("the refitted model did not match the module at the proof's sizes: not kept")
        refitted.rebuilt = []
        return None
    if not checked.ok:
        refitted.notes.append("kept, though it does not match the module at every size: it matches wherever the "
                              "file without it did, and at more sizes")
    result, verification = repaired(unsafe=False, source=source)
    result.status = "repaired" if result.status == "unchanged" else result.status
    return result, verification


def _fresh(scratch) -> Path:
    """A new folder in the scratch folder, whatever the export's own file is named."""
    return Path(tempfile.mkdtemp(dir=scratch))


def _better(checked, current) -> bool:
    """Whether the checks `checked` pass at two sizes or more, every size `current` passed at, and more."""
    if checked is None:
        return False
    passed = {str(c.input_shapes) for c in checked.checks if c.ok}
    before = set() if current is None else {str(c.input_shapes) for c in current.checks if c.ok}
    return _two_sizes([c for c in checked.checks if c.ok]) and before < passed


def _refitted(model, call: tuple[tuple, dict], raw: Path, probe_args: list[tuple], scratch: Path,
              **export_kwargs: Any):
    """The export with the constants that move between traces at other sizes rebuilt (refit.Refitted)."""
    import onnx
    import torch

    from graphfix.exporting.refit import Refitted, refit
    from graphfix.exporting.verify import call_inputs, call_tensors, dim_sizes, named_dims, sized_call, split_call

    exported = onnx.load_model(str(raw), load_external_data=False)
    aligned = call_inputs(exported, export_kwargs.get("input_names"))
    generator = torch.Generator().manual_seed(1)
    folder = _fresh(scratch)

    def trace(sizes) -> onnx.ModelProto | None:
        path = folder / "trace.onnx"
        try:
            args, named = sized_call(aligned, call, dict(sizes), generator)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (*args, named) if named else args, str(path), dynamo=False,
                                  **export_kwargs)
            return onnx.load_model(str(path), load_external_data=False)
        except MemoryError:
            raise  # not the module's domain: the refit stops (below)
        except Exception:  # a size the module rejects: outside the graph's domain
            return None
        finally:
            for written in folder.iterdir():  # the trace and any external data it wrote: one at a time on disk
                written.unlink()

    proof = [dim_sizes(aligned, call_tensors(*split_call(args))) for args in probe_args]
    try:
        return refit(exported, named_dims(aligned, [t.shape for t in call_tensors(*call)]), trace, avoid=proof)
    except MemoryError:
        return Refitted(None, notes=["a trace at another size ran out of memory: the traces stopped"])


def _settles(checked) -> bool:
    """Whether the module settles an unsafe repair: it matched at every size, and at two sizes or more. At the
    export size alone every hypothesis agrees (the module may reject the other probes' made-up values, as
    `lengths.max().item()` must equal the length: give `probe_args` then)."""
    return checked is not None and checked.ok and _two_sizes(checked.checks)


def _two_sizes(checks) -> bool:
    """Whether `checks` are at two sizes or more: at the example's size alone every guess and every fit agree."""
    return len({str(c.input_shapes) for c in checks}) >= 2


def _unsafe_left(result) -> bool:
    """Whether the repair left findings whose fix waits for --unsafe-fixes."""
    return any(f.fix is not None and f.fix.safety is Safety.UNSAFE for f in result.after.findings)


def _trace_shapes(path: Path, call: tuple[tuple, dict], input_names=None) -> dict[str, tuple[int, ...]]:
    """Graph input name -> the shape of the example tensor exported for it (`verify.call_inputs`: by the name given
    for it, an input the exporter dropped leaving the others' places; helper 106), where the ranks agree."""
    import onnx

    from graphfix.exporting.verify import call_inputs, call_tensors

    aligned = call_inputs(onnx.load_model(str(path), load_external_data=False), input_names)
    return {meta.name: tuple(t.shape) for meta, t in zip(aligned.graph.input, call_tensors(*call), strict=False)
            if meta.type.tensor_type.HasField("shape") and len(meta.type.tensor_type.shape.dim) == len(t.shape)}
