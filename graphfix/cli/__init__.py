"""The `graphfix` command: every failure is one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import os
import sys

import click

from graphfix import __version__
from graphfix.core.errors import GraphfixError, InternalError


class GraphfixGroup(click.Group):
    """Turns GraphfixError into its one-line message and exit code, and a command's int result into the exit code."""

    def invoke(self, ctx: click.Context):
        try:
            result = super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:  # `graphfix ... | head`: the reader left, which is no error of ours
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except GraphfixError as exc:
            if isinstance(exc, InternalError) and exc.__cause__ is not None and (ctx.obj or {}).get("debug"):
                raise exc.__cause__ from None  # the rule's own traceback
            click.echo(f"graphfix: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except Exception as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"graphfix: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the "
                       "traceback)", err=True)
            ctx.exit(1)
        if isinstance(result, int):
            ctx.exit(result)
        return result


@click.group(cls=GraphfixGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="graphfix")
@click.option("--debug", is_flag=True, help="Show tracebacks for internal errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Diagnose, repair, simplify and prove PyTorch-exported ONNX models."""
    ctx.obj = {"debug": debug}


def _register_commands() -> None:
    from graphfix.cli import bench, check, diagnose, explain, extract, freeze, repair, rules, set_shape, stream

    for module in (diagnose, repair, check, extract, freeze, set_shape, stream, bench, rules, explain):
        cli.add_command(module.command)


_register_commands()


def main() -> None:
    cli.main(prog_name="graphfix")
