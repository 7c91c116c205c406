"""Option groups shared by the commands (Polygraphy's argument groups, as click decorators)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
import numpy as np

from graphfix.errors import UsageError


def _compose(*decorators: Callable) -> Callable:
    def apply(func: Callable) -> Callable:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def _split_codes(ctx, param, value: str | None) -> tuple[str, ...]:
    return tuple(code.strip() for code in (value or "").split(",") if code.strip())


def parse_dims(text: str) -> tuple[int | None, ...]:
    """'1x16000' -> (1, 16000); 'Bx?' -> (None, None) (symbolic dims stay free)."""
    dims: list[int | None] = []
    for part in text.lower().split("x"):
        part = part.strip()
        if part.isdigit():
            dims.append(int(part))
        elif part:
            dims.append(None)
        else:
            raise UsageError(f"bad shape '{text}': expected dims like 1x16000 or Bx?")
    return tuple(dims)


def _name_value_pairs(option: str, values: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise UsageError(f"{option} expects NAME=VALUE, got '{item}'")
        pairs[name] = value
    return pairs


def parse_shapes(option: str, values: tuple[str, ...]) -> dict[str, tuple[int | None, ...]]:
    return {name: parse_dims(dims) for name, dims in _name_value_pairs(option, values).items()}


def parse_input_files(values: tuple[str, ...]) -> dict[str, np.ndarray]:
    arrays = {}
    for name, file in _name_value_pairs("--input", values).items():
        path = Path(file.removeprefix("@"))
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--input {name}: cannot read '{path}' as a .npy array ({exc})") from exc
    return arrays


paths_argument = click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))

format_option = click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="Output format; json is one document on stdout.",
)

rule_selection = _compose(
    click.option("--only", callback=_split_codes, metavar="CODE,...", help="Run only these rules."),
    click.option("--skip", callback=_split_codes, metavar="CODE,...", help="Do not run these rules."),
)

rule_inputs = _compose(
    click.option("--expect-outputs", callback=_split_codes, metavar="NAME,...",
                 help="Outputs the deployment needs; missing ones are GF001 errors."),
    click.option("--trace-shape", "trace_shapes", multiple=True, metavar="NAME=DIMS",
                 help="Input shape used at export time (e.g. x=2x400), when the graph cannot tell."),
    click.option("--show-rejected", is_flag=True, help="Also list candidates rules looked at and why they let go."),
)

fail_on_option = click.option(
    "--fail-on", type=click.Choice(["error", "warning", "info", "never"]), default="error", show_default=True,
    help="Exit 1 when a finding of this severity or worse is reported.",
)

probe_inputs = _compose(
    click.option("--shape", "shapes", multiple=True, metavar="NAME=DIMS",
                 help="Input shape for runtime checks, e.g. audio=1x16000 (repeatable)."),
    click.option("--input", "input_files", multiple=True, metavar="NAME=FILE.npy",
                 help="Input value for runtime checks (repeatable)."),
    click.option("--rtol", type=float, default=1e-3, show_default=True, help="Relative tolerance."),
    click.option("--atol", type=float, default=1e-4, show_default=True, help="Absolute tolerance."),
)

fix_options = _compose(
    click.option("--unsafe-fixes", is_flag=True, help="Also apply fixes marked unsafe (they change the interface)."),
)


def rule_options_from(*, static: bool = False, unsafe_fixes: bool = False, expect_outputs=(), trace_shapes=()):
    from graphfix.context import RuleOptions

    traced = parse_shapes("--trace-shape", tuple(trace_shapes))
    for name, dims in traced.items():
        if any(d is None for d in dims):
            raise UsageError(f"--trace-shape {name}: give every dim as a number (the export-time size)")
    return RuleOptions(static=static, unsafe_fixes=unsafe_fixes, expect_outputs=tuple(expect_outputs),
                       trace_shapes=traced)


def validation_options_from(*, shapes=(), input_files=(), rtol: float = 1e-3, atol: float = 1e-4):
    from graphfix.validate import ValidationOptions

    return ValidationOptions(shapes=parse_shapes("--shape", tuple(shapes)), inputs=parse_input_files(input_files),
                             rtol=rtol, atol=atol)
