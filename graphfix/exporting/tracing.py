"""What torch.onnx.export said while tracing: the values its TracerWarnings turned into constants, linked to the
graph findings they explain (by module scope), and an export's failure explained from graphfix's knowledge base
with the user's own source line."""

from __future__ import annotations

import inspect
import linecache
import traceback
from dataclasses import dataclass

from graphfix.core.rule import Finding
from graphfix.report.knowledge import explain_message


@dataclass
class TracerNote:
    """A value the tracer turned into a constant, where it happened, and the module scope it belongs to."""

    message: str
    filename: str
    lineno: int
    source: str
    scope: str | None  # '/roi_heads' style prefix of the exported node names, when known

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno}: {self.source.strip()}  ({self.message.split('.')[0]})"


def explain_failure(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    known = explain_message(text) or (explain_message(str(exc.__cause__)) if exc.__cause__ else None)
    where = _user_frame(exc)
    head = f"torch.onnx.export failed{f' at {where}' if where else ''}: {_headline(str(exc))[:300]}"
    if known is None:
        return head
    return f"{head}\n{known.explain()}"


def _headline(message: str) -> str:
    """The line that says what went wrong: the dynamo exporter puts it under '## Exception summary'."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if "## Exception summary" in lines:
        following = lines[lines.index("## Exception summary") + 1:]
        if following:
            return following[0]
    return lines[0] if lines else message


def _user_frame(exc: BaseException) -> str | None:
    """The innermost traceback frame outside torch, transformers and graphfix: the user's line."""
    frames = traceback.extract_tb(exc.__traceback__)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause.__traceback__ is not None:
        frames += traceback.extract_tb(cause.__traceback__)
    mine = [fr for fr in frames if not any(p in fr.filename for p in ("/torch/", "/transformers/", "/graphfix/",
                                                                       "site-packages", "<frozen"))]
    if not mine:
        return None
    frame = mine[-1]
    return f"{frame.filename}:{frame.lineno} ({(frame.line or '').strip()})"


def tracer_notes(caught, model) -> list[TracerNote]:
    scopes = _module_scopes(model)
    notes = []
    for warning in caught:
        message = str(warning.message)
        if "TracerWarning" not in type(warning.message).__name__ and "Converting a tensor to a Python" not in message:
            continue
        source = linecache.getline(warning.filename, warning.lineno)
        scope = next((s for (file, first, last), s in scopes.items()
                      if file == warning.filename and first <= warning.lineno <= last), None)
        notes.append(TracerNote(message, warning.filename, warning.lineno, source, scope))
    return notes


def _module_scopes(model) -> dict[tuple[str, int, int], str]:
    """(file, first line, last line) of each submodule's forward() -> the node-name scope the exporter uses."""
    scopes: dict[tuple[str, int, int], str] = {}
    for name, module in model.named_modules():
        try:
            lines, first = inspect.getsourcelines(type(module).forward)
            file = inspect.getsourcefile(type(module).forward)
        except (OSError, TypeError):
            continue
        if file is None:
            continue
        key = (file, first, first + len(lines) - 1)
        scope = "/" + name.replace(".", "/") if name else "/"
        if key not in scopes or len(scope) > len(scopes[key]):  # the deepest module using this forward wins
            scopes[key] = scope
    return scopes


def link_notes(findings: list[Finding], notes: list[TracerNote]) -> dict[int, list[TracerNote]]:
    """Which warnings explain which findings: by module scope when the exporter named nodes by scope, else every
    warning for every finding about a baked value when there is only one warning."""
    from graphfix.core.registry import load_rules

    baked = {rule.code for rule in load_rules()[0] if rule.traced_values}
    links: dict[int, list[TracerNote]] = {}
    for index, finding in enumerate(findings):
        if finding.rule not in baked:
            continue
        matched = [n for n in notes if n.scope and n.scope != "/" and
                   any(node.startswith(n.scope + "/") for node in finding.nodes)]
        if not matched and len(notes) == 1:
            matched = notes
        if not matched:
            matched = [n for n in notes if n.scope == "/"]
        if matched:
            links[index] = matched
    return links
