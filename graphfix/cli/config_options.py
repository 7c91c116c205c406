"""Option groups for configuration and batches: `--config/--isolated` (applies [tool.graphfix]), `--jobs`.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from graphfix.config import Config, load_config

CONFIG_META = "graphfix.config"
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
        from graphfix.errors import UsageError

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
                        help="Settings from this pyproject.toml's [tool.graphfix] (default: the nearest one from "
                             "the current folder upwards).")(wrapper)


report_format_option = click.option(
    "--format", "fmt", type=click.Choice(["text", "json", "sarif"]), default="text", show_default=True,
    help="Output format: text for CI logs, json (the diagnose schema), sarif 2.1.0 for code scanning.",
)

batch_options = click.option(
    "-j", "--jobs", type=click.IntRange(min=1), default=None, metavar="N",
    help="Models checked in parallel, in a process pool [default: CPU count].",
)
