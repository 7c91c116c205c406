"""Option groups shared by the commands (Polygraphy's argument groups, as click decorators).

- Models and outputs: `paths_argument`, `model_argument`, `models_argument`, `output_option`.
- Rules: `rule_selection` (--only/--skip), `rule_inputs`, `fix_options`, `fail_on_option`, `format_option`.
- Runs: `shape_option`, `tolerance_options`, `probe_inputs` (both plus --input), `threads_option`.
- Configuration and batches: `config_options` (--config/--isolated), `report_format_option`, `batch_options`.

    @click.command("diagnose")
    ...
    @config_options          # anywhere below @click.command
    def command(paths, fmt, fail_on, only, skip, ..., rtol, atol) -> int:
        config = current_config()        # for per-model settings: config.for_model(path), probe_options_for(...)

`config_options` adds the two options, takes them out of the callback's arguments (its signature stays as it
was), and replaces every argument the user did not give on the command line (click's parameter source is the
default) with the value from the configuration: only <- select, skip <- ignore, fail_on <- fail-on, rtol, atol.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
from click.core import ParameterSource

from graphfix.core import values
from graphfix.core.config import CONFIG_META, Config, load_config, name_values, parse_shapes, read_npy
from graphfix.core.errors import UsageError
from graphfix.io.paths import output_path

MAX_WORKERS = 1024  # --jobs and --threads: past this, a number is a typo, not a machine
MAX_RUNS = 1_000_000  # bench's --runs and --warmup, stream's --steps


def _compose(*decorators: Callable) -> Callable:
    def apply(func: Callable) -> Callable:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def _split_codes(ctx, param, value: str | None) -> tuple[str, ...]:
    return tuple(code.strip() for code in (value or "").split(",") if code.strip())


def parsed(parse: Callable[..., Any], **bounds) -> Callable:
    """A click callback giving an option's value to one of graphfix.core.values' parsers: a bad value is a
    UsageError (one line, exit 2) naming the option; None (not given) stays None."""

    def callback(ctx, param, value):
        return None if value is None else parse(value, max(param.opts, key=len), **bounds)

    return callback


def parse_input_files(values: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {name: read_npy(Path(file.removeprefix("@")), f"--input {name}")
            for name, file in name_values("--input", values).items()}


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

shape_option = click.option("--shape", "shapes", multiple=True, metavar="NAME=DIMS",
                            help="Input shape for the onnxruntime runs, e.g. audio=1x16000 (repeatable); the "
                            "batch dims it fixes are also probed moved (to 1, or 2 where given 1).")

tolerance_options = _compose(
    click.option("--rtol", callback=parsed(values.tolerance), type=str, default=1e-3, show_default=True,
                 metavar="FLOAT", help="Relative tolerance of the checks."),
    click.option("--atol", callback=parsed(values.tolerance), type=str, default=1e-4, show_default=True,
                 metavar="FLOAT", help="Absolute tolerance of the checks."),
)

probe_inputs = _compose(
    shape_option,
    click.option("--input", "input_files", multiple=True, metavar="NAME=FILE.npy",
                 help="Input value for runtime checks (repeatable)."),
    tolerance_options,
)

fix_options = _compose(
    click.option("--unsafe-fixes", is_flag=True,
                 help="Also apply fixes marked unsafe: they may change the interface or the results."),
)

require_option = click.option(
    "--require", type=click.Choice(["runs", "consistent", "original", "torch"]), default="runs",
    show_default=True,
    help="Evidence every dynamic dim must reach, away from its export size, before repair writes: only shapes "
    "checked (runs; values are still compared wherever a reference exists, and in full at the export size), values "
    "compared with the original run sample by sample (consistent) or with the original itself (original); torch "
    "needs the PyTorch module (graphfix.export, graphfix.verify). consistent|original: the strict gate for CI.",
)


def rule_options_from(*, static: bool = False, unsafe_fixes: bool = False, expect_outputs=(), trace_shapes=(),
                      several: bool = False):
    from graphfix.core.rule import RuleOptions

    traced = parse_shapes("--trace-shape", tuple(trace_shapes))
    for name, dims in traced.items():
        if any(d is None for d in dims):
            raise UsageError(f"--trace-shape {name}: give every dim as a number (the export-time size)")
    return RuleOptions(static=static, unsafe_fixes=unsafe_fixes, expect_outputs=tuple(expect_outputs),
                       trace_shapes=traced, several=several)


def validation_options_from(*, shapes=(), input_files=(), rtol: float = 1e-3, atol: float = 1e-4,
                            require: str = "runs"):
    from graphfix.validate import ValidationOptions

    return ValidationOptions(shapes=parse_shapes("--shape", tuple(shapes)), inputs=parse_input_files(input_files),
                             rtol=rtol, atol=atol, require=require)


def shapes_from(shapes: tuple[str, ...]) -> dict[str, tuple[int | None, ...]]:
    return parse_shapes("--shape", tuple(shapes))


# --- models and outputs (surgery commands) ---
class OutputPath(click.Path):
    """A path graphfix writes to, as `graphfix.io.paths.output_path` reads it."""

    def __init__(self, folder: bool = False, **kwargs) -> None:
        super().__init__(path_type=Path, **kwargs)
        self.folder = folder

    def convert(self, value, param, ctx) -> Path:
        text = str(value)  # pathlib drops a last slash or `.`: a file would be written under the folder's name
        if not self.folder and (text.endswith(("/", os.sep)) or os.path.basename(text) in (".", "..")):
            self.fail(f"'{value}' names a folder; give the file's path", param, ctx)
        if text == "-":  # read by many tools as stdout: graphfix writes a file and its data beside it (helper 126)
            self.fail("'-' is no file graphfix writes to (a model does not go to stdout); give a path, ./- for a "
                      "file of that name", param, ctx)
        return output_path(super().convert(value, param, ctx))


model_argument = click.argument("model", type=click.Path(path_type=Path))
models_argument = click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))

output_option = click.option("-o", "--output", type=OutputPath(dir_okay=False), required=True,
                             help="Where to write the checked model (external data goes beside it as OUT.data).")

threads_option = click.option("--threads", callback=parsed(values.count, high=MAX_WORKERS), default=None,
                              metavar="N",
                              help="onnxruntime intra-op threads (default: onnxruntime's choice).")


def split_names(ctx, param, value: str | None) -> list[str]:
    """'a,b' -> ['a', 'b'] (an option callback)."""
    return [name.strip() for name in (value or "").split(",") if name.strip()]


# Where a surgery command writes its checked result, the tolerances of the check, and how it reports.
checked_output_options = _compose(output_option, tolerance_options, format_option)


# --- configuration and batches ---
USER_SOURCES = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.PROMPT)


def apply_config(ctx: click.Context, params: dict[str, Any], config: Config) -> dict[str, Any]:
    """`params` with the config's values where the user gave none; only keys the command has are touched.

    only <- select, skip <- ignore, fail_on <- fail-on, rtol, atol.
    """
    values = {"only": config.select or None, "skip": config.ignore or None,
              "fail_on": config.fail_on, "rtol": config.rtol, "atol": config.atol}
    updated = dict(params)
    for key, value in values.items():
        if key in params and value is not None and not user_given(ctx, key):
            updated[key] = value
    return updated


def user_given(ctx: click.Context, name: str) -> bool:
    """True when `name` came from the command line (or its environment variable), not from a default."""
    return ctx.get_parameter_source(name) in USER_SOURCES


def current_config() -> Config:
    """The configuration `config_options` loaded for the running command (defaults outside one)."""
    ctx = click.get_current_context(silent=True)
    return (ctx.meta.get(CONFIG_META) if ctx is not None else None) or Config()


def config_filter(model: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(select, ignore) codes the configuration applies to `model`'s findings, for filter_findings: the file's
    select unless --only was given, its ignore unless --skip was given, and its per-file-ignores always."""
    ctx, config = click.get_current_context(), current_config()
    has = {param.name for param in ctx.command.params}
    select = config.select if not ("only" in has and user_given(ctx, "only")) else ()
    ignore = config.ignore if not ("skip" in has and user_given(ctx, "skip")) else ()
    return select, tuple(dict.fromkeys((*ignore, *config.for_model(model).ignore)))


def config_options(func: Callable) -> Callable:
    @functools.wraps(func)
    def wrapper(*args, config_file: Path | None = None, isolated: bool = False, **kwargs):
        if isolated and config_file is not None:
            raise UsageError("give only one of --config and --isolated")
        ctx = click.get_current_context()
        config = Config() if isolated else load_config(config_file)
        ctx.meta[CONFIG_META] = config
        return func(*args, **apply_config(ctx, kwargs, config))

    wrapper = click.option("--isolated", is_flag=True,
                           help="Ignore every pyproject.toml: command-line options and defaults only.")(wrapper)
    return click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
                        metavar="FILE",
                        help="Settings from this pyproject.toml's [tool.graphfix] (default: the project's, the "
                             "first pyproject.toml from the current folder up to the repository root).")(wrapper)


report_format_option = click.option(
    "--format", "fmt", type=click.Choice(["text", "json", "sarif"]), default="text", show_default=True,
    help="Output format: text for CI logs, json (the diagnose schema), sarif 2.1.0 for code scanning.",
)

batch_options = click.option(
    "-j", "--jobs", callback=parsed(values.count, high=MAX_WORKERS), default=None, metavar="N",
    help="Models checked in parallel, in a process pool [default: CPU count].",
)
