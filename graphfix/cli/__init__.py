"""The `graphfix` command: every failure is one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import sys

import click

from graphfix import __version__
from graphfix.errors import GraphfixError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="graphfix")
@click.option("--debug", is_flag=True, help="Show tracebacks for internal errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Diagnose, repair, simplify and prove PyTorch-exported ONNX models."""
    ctx.obj = {"debug": debug}


def _register_commands() -> None:
    from graphfix.cli import diagnose, explain, repair, rules

    for module in (diagnose, repair, rules, explain):
        cli.add_command(module.command)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        code = cli.main(args=args, prog_name="graphfix", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = 2 if isinstance(exc, click.UsageError) else exc.exit_code
    except click.Abort:
        click.echo("graphfix: aborted", err=True)
        code = 130
    except GraphfixError as exc:
        click.echo(f"graphfix: error: {exc}", err=True)
        code = exc.exit_code
    except Exception as exc:
        if debug:
            raise
        click.echo(f"graphfix: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
                   err=True)
        code = 1
    sys.exit(code or 0)
