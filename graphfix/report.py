"""Text and JSON renderings of what the commands found and did."""

from __future__ import annotations

import json
from typing import Any

import click

from graphfix import __version__
from graphfix.rule import Finding, Severity

COLORS = {"error": "red", "warning": "yellow", "info": "cyan"}


def emit_json(key: str, items: list[dict[str, Any]]) -> None:
    click.echo(json.dumps({"graphfix": __version__, key: items}, indent=2))


def finding_lines(finding: Finding) -> list[str]:
    where = f" [{', '.join(finding.nodes[:3])}{'…' if len(finding.nodes) > 3 else ''}]" if finding.nodes else ""
    head = (f"  {click.style(finding.severity.value, fg=COLORS[finding.severity.value])} "
            f"{finding.rule} {finding.name}{where}: {finding.message}")
    lines = [head]
    if finding.shapes:
        lines.append("      shapes: " + ", ".join(f"{k}={v}" for k, v in finding.shapes.items()))
    if finding.hint:
        lines.append(f"      fix: {finding.hint}")
    if finding.fix is not None:
        lines.append(f"      graphfix can: {finding.fix.summary} ({finding.fix.safety.value})")
    return lines


def findings_text(path: str, findings: list[Finding], error: str | None) -> str:
    if error:
        return f"graphfix: error: {error}"
    if not findings:
        return f"{path}: no findings"
    counts = {s: sum(f.severity is s for f in findings) for s in Severity}
    summary = ", ".join(f"{n} {s.value}{'s' if n != 1 else ''}" for s, n in counts.items() if n)
    return "\n".join([f"{path}: {summary}", *(line for f in findings for line in finding_lines(f))])


def worst_rank(findings: list[Finding]) -> int:
    return max((f.severity.rank for f in findings), default=-1)


def fails(findings: list[Finding], fail_on: str) -> bool:
    return fail_on != "never" and worst_rank(findings) >= Severity(fail_on).rank
