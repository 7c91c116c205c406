"""`graphfix explain CODE|MESSAGE`: a rule's documentation, or what a known error message means."""

from __future__ import annotations

import click

from graphfix.core.errors import printable
from graphfix.core.registry import find_rule
from graphfix.report.knowledge import explain_message


@click.command("explain")
@click.argument("text", nargs=-1, required=True)
def command(text: tuple[str, ...]) -> int:
    """Explain rule TEXT (e.g. GF001, truncated-graph), or an exporter / onnxruntime error message."""
    query = " ".join(text).strip()
    rule = find_rule(query)
    if rule is not None:
        click.echo(f"{rule.code} {rule.name} ({rule.severity.value})\n")
        click.echo(rule.docs())
        return 0
    known = explain_message(query)
    if known is None:
        click.echo(f"graphfix: not recognised: '{printable(query[:120])}' is neither a rule nor a known error message "
                   "(see `graphfix rules`)", err=True)
        return 1
    click.echo(known.explain())
    return 0
