"""Text and JSON renderings of what the commands found and did.

Every string that comes from a model or a file name (node names, messages quoting them, paths) goes through
`printable` before it is printed as text: a newline in a node name would start a line of its own (a CI log
command such as `::error file=...::` or `::add-mask::`), and a terminal escape or a bidi override would change what
the reader sees. JSON and SARIF need no such care: `json.dumps` escapes every control and non-ASCII character; but
it writes an infinite or undefined float as `Infinity` or `NaN`, which no JSON parser reads (`json_text` names them).
"""

from __future__ import annotations

import json
import math
from typing import Any

import click

from graphfix.core.config import CONFIG_META
from graphfix.core.errors import printable, printable_path
from graphfix.core.rule import Finding, Safety, Severity
from graphfix.core.version import VERSION

COLORS = {"error": "red", "warning": "yellow", "info": "cyan"}


def emit_json(key: str, items: list[dict[str, Any]]) -> None:
    """One JSON document on stdout; `config` names the pyproject.toml whose settings the command used (the key is
    left out when it used none)."""
    used = config_used()
    click.echo(json_text({"graphfix": VERSION, **({"config": used} if used else {}), key: items}))


def json_text(document: Any) -> str:
    """The document as JSON, each float JSON cannot hold written as its name, `"inf"` or `"nan"` (helper 126:
    `bench --audio-seconds 1e-320 --format json` wrote `"rtf": Infinity`)."""
    return json.dumps(_finite(document), indent=2, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def config_used() -> str | None:
    """The configuration file the running command read, as a string, or None."""
    context = click.get_current_context(silent=True)
    config = context.meta.get(CONFIG_META) if context is not None else None
    return str(config.path) if config is not None and config.path is not None else None


def finding_lines(finding: Finding) -> list[str]:
    where = f" [{', '.join(finding.nodes[:3])}{'…' if len(finding.nodes) > 3 else ''}]" if finding.nodes else ""
    head = (f"  {click.style(finding.severity.value, fg=COLORS[finding.severity.value])} "
            + printable(f"{finding.rule} {finding.name}{where}: {finding.message}"))
    lines = [head]
    if finding.shapes:
        lines.append("      shapes: " + printable(", ".join(f"{k}={v}" for k, v in finding.shapes.items())))
    if finding.hint:
        lines.append(f"      fix: {printable(finding.hint)}")
    if finding.fix is not None:
        lines.append(f"      graphfix can: {printable(finding.fix.summary)} ({finding.fix.safety.value})")
        if finding.fix.safety is Safety.UNSAFE and finding.fix.reason:  # what --unsafe-fixes would take on trust
            lines.append(f"      unsafe because: {printable(finding.fix.reason)}")
    return lines


def findings_text(path: str, findings: list[Finding], error: str | None) -> str:
    if error:
        return f"graphfix: error: {printable(error)}"
    if not findings:
        return f"{printable_path(path)}: no findings"
    counts = {s: sum(f.severity is s for f in findings) for s in Severity}
    summary = ", ".join(f"{n} {s.value}{'s' if n != 1 else ''}" for s, n in counts.items() if n)
    return "\n".join([f"{printable_path(path)}: {summary}", *(line for f in findings for line in finding_lines(f))])


def rejection_line(rejection) -> str:
    """`  rejected GF004 [node, ...]: why` (--show-rejected)."""
    return "  " + printable(f"rejected {rejection.rule} [{', '.join(rejection.nodes)}]: {rejection.reason}")


def worst_rank(findings: list[Finding]) -> int:
    return max((f.severity.rank for f in findings), default=-1)


def fails(findings: list[Finding], fail_on: str) -> bool:
    return fail_on != "never" and worst_rank(findings) >= Severity(fail_on).rank

def emit_result(result, fmt: str) -> int:
    """Print a SurgeryResult (text or JSON) and return its exit code: 0 written, 1 refused by the check."""
    if fmt == "json":
        emit_json("models", [result.to_json()])
        return 0 if result.passed else 1
    status = click.style(result.status, fg="green" if result.passed else "red")
    where = f" -> {printable(result.output)}" if result.output else ""
    click.echo(f"{printable_path(result.path)}: {status}{where}")
    if result.summary:
        click.echo(f"  {printable(result.summary)}")
    for note in result.notes:
        click.echo(f"  note: {printable(note)}")
    ran = [c for c in result.checks if c["ok"]]
    broken = [c for c in result.checks if str(c.get("original", c.get("whole", ""))).startswith("failed")]
    if broken:
        from graphfix.validate.runner import failing_node

        error = str(broken[0].get("original", broken[0].get("whole"))).removeprefix("failed: ")
        where = failing_node(error)
        what = f"node '{where[1]}' ({where[0]})" if where else error[:80]
        click.echo(printable(f"  the original fails at {len(broken)} of {len(result.checks)} size(s), in {what}; "
                             "the result runs there"))
    if result.checks:
        click.echo(f"  check: {'passed' if result.passed else 'FAILED'} at {len(ran)}/{len(result.checks)} size(s)")
    if result.error:
        click.echo(f"  error: {printable(result.error)} (nothing written)")
    return 0 if result.passed else 1
