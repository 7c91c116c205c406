"""`graphfix rules`: the registered rules."""

from __future__ import annotations

import json

import click

from graphfix.cli.options import format_option
from graphfix.core.errors import printable
from graphfix.core.registry import load_rules


def rule_rows() -> list[dict]:
    rules, broken = load_rules()
    rows = [
        {"code": r.code, "name": r.name, "severity": r.severity.value, "fixable": r.fixable, "summary": r.summary()}
        for r in rules
    ]
    rows += [{"code": b.code, "name": "broken-plugin" if b.plugin else "internal-error", "severity": "error",
              "fixable": False, "summary": f"failed to load: {b.error}"} for b in broken]
    return rows


@click.command("rules")
@format_option
def command(fmt: str) -> None:
    """List the rules: code, name, severity, fixable, summary."""
    rows = rule_rows()
    if fmt == "json":
        click.echo(json.dumps({"rules": rows}, indent=2))
        return
    for row in rows:
        fixable = "fix" if row["fixable"] else "   "
        click.echo(printable(f"{row['code']}  {row['name']:<22} {row['severity']:<8} {fixable}  {row['summary']}"))

