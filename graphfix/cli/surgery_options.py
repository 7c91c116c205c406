"""Option groups and output shared by the surgery commands (extract, freeze, set-shape, stream, bench)."""

from __future__ import annotations

from pathlib import Path

import click

from graphfix.cli.options import _compose, parse_shapes
from graphfix.errors import UsageError
from graphfix.report import emit_json

model_argument = click.argument("model", type=click.Path(path_type=Path))
models_argument = click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))

output_option = click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True,
                             help="Where to write the checked model (external data goes beside it as OUT.data).")

tolerance_options = _compose(
    click.option("--rtol", type=float, default=1e-3, show_default=True, help="Relative tolerance of the check."),
    click.option("--atol", type=float, default=1e-4, show_default=True, help="Absolute tolerance of the check."),
)

shape_option = click.option("--shape", "shapes", multiple=True, metavar="NAME=DIMS",
                            help="Input shape for the runs, e.g. audio=1x16000 (repeatable).")

threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                              help="onnxruntime intra-op threads (default: onnxruntime's choice).")


def split_names(ctx, param, value: str | None) -> list[str]:
    """'a,b' -> ['a', 'b'] (an option callback)."""
    return [name.strip() for name in (value or "").split(",") if name.strip()]


def name_values(option: str, items: tuple[str, ...]) -> dict[str, str]:
    """('a=b', ...) -> {'a': 'b'}; a name given twice or an item without '=' is a usage error."""
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UsageError(f"{option} expects NAME=VALUE, got '{item}'")
        if name.strip() in pairs:
            raise UsageError(f"{option} names '{name.strip()}' twice")
        pairs[name.strip()] = value.strip()
    return pairs


def shapes_from(shapes: tuple[str, ...]) -> dict[str, tuple[int | None, ...]]:
    return parse_shapes("--shape", tuple(shapes))


def validation_options(shapes=(), rtol: float = 1e-3, atol: float = 1e-4):
    from graphfix.validate import ValidationOptions

    return ValidationOptions(shapes=shapes_from(shapes) if shapes else {}, rtol=rtol, atol=atol)


def emit_result(result, fmt: str) -> int:
    """Print a SurgeryResult (text or JSON) and return its exit code: 0 written, 1 refused by the check."""
    if fmt == "json":
        emit_json("models", [result.to_json()])
        return 0 if result.passed else 1
    status = click.style(result.status, fg="green" if result.passed else "red")
    where = f" -> {result.output}" if result.output else ""
    click.echo(f"{result.path}: {status}{where}")
    if result.summary:
        click.echo(f"  {result.summary}")
    for note in result.notes:
        click.echo(f"  note: {note}")
    ran = [c for c in result.checks if c["ok"]]
    broken = [c for c in result.checks if str(c.get("original", c.get("whole", ""))).startswith("failed")]
    if broken:
        from graphfix.validate.runner import failing_node

        error = str(broken[0].get("original", broken[0].get("whole"))).removeprefix("failed: ")
        where = failing_node(error)
        what = f"node '{where[1]}' ({where[0]})" if where else error[:80]
        click.echo(f"  the original fails at {len(broken)} of {len(result.checks)} size(s), in {what}; "
                   "the result runs there")
    if result.checks:
        click.echo(f"  check: {'passed' if result.passed else 'FAILED'} at {len(ran)}/{len(result.checks)} size(s)")
    if result.error:
        click.echo(f"  error: {result.error} (nothing written)")
    return 0 if result.passed else 1
