"""`graphfix explain CODE`: a rule's documentation, printed from the rule itself."""

from __future__ import annotations

import click

from graphfix.errors import UsageError
from graphfix.registry import find_rule


@click.command("explain")
@click.argument("code")
def command(code: str) -> None:
    """Print the documentation of rule CODE (e.g. GF001 or truncated-graph)."""
    rule = find_rule(code)
    if rule is None:
        raise UsageError(f"unknown rule '{code}' (see `graphfix rules`)")
    click.echo(f"{rule.code} {rule.name} ({rule.severity.value})\n")
    click.echo(rule.docs())
