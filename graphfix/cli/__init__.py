"""The `graphfix` command: every failure is one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
import warnings
from typing import NoReturn

import click

from graphfix.cli.options import parsed
from graphfix.core import forked, values
from graphfix.core.critical import stop_with
from graphfix.core.errors import GraphfixError, InternalError, TimedOut
from graphfix.core.version import VERSION
from graphfix.io import staging
from graphfix.report.text import printable


class GraphfixGroup(click.Group):
    """Turns GraphfixError into its one-line message and exit code, and a command's int result into the exit code."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """A word that reads as an option but names a file that exists is refused before anything runs (exit 2):
        pre-commit and other callers append file names after the options, and a repository may hold a file named
        `--output-file=/elsewhere/model.onnx` (a folder `--output-file=` and the rest below it), which would
        otherwise be parsed as that option and overwrite a file outside the repository (helper 55). File names
        after `--` are file names."""
        for word in args[:args.index("--")] if "--" in args else args:
            if word.startswith("-") and word != "-" and os.path.lexists(word):
                click.echo(f"graphfix: error: {printable(word)!r} reads as an option but names an existing file; "
                           "pass file names after `--` (or as ./NAME)", err=True)
                ctx.exit(2)
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            _refuse_usage(ctx, exc)

    def invoke(self, ctx: click.Context):
        try:
            result = super().invoke(ctx)
        except click.UsageError as exc:
            _refuse_usage(ctx, exc)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:  # `graphfix ... | head`: the reader left, which is no error of ours
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except TimedOut as exc:
            _stopped(ctx, exc)
        except MemoryError as exc:  # the machine's limit, not a bug: what the model or the sizes given need
            click.echo(f"graphfix: error: out of memory{': ' + printable(exc) if str(exc) else ''} (give smaller "
                       "sizes with --shape or --trace-shape, or run where more memory is free)", err=True)
            ctx.exit(2)
        except GraphfixError as exc:
            if isinstance(exc, InternalError) and exc.__cause__ is not None and (ctx.obj or {}).get("debug"):
                raise exc.__cause__ from None  # the rule's own traceback
            click.echo(f"graphfix: error: {printable(exc)}", err=True)
            ctx.exit(exc.exit_code)
        except Exception as exc:
            if (stop := _timed_out(exc)) is not None:  # raised inside a native module's import: its ImportError
                _stopped(ctx, stop)
            if (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"graphfix: internal error: {type(exc).__name__}: {printable(exc)} (a bug in graphfix, not in "
                       "your model; rerun with --debug for the traceback)", err=True)
            ctx.exit(2)
        if isinstance(result, int):
            ctx.exit(result)
        return result


def _stopped(ctx: click.Context, stop: TimedOut) -> NoReturn:
    """`--timeout`'s line: what this run wrote before it stopped, or that it wrote nothing."""
    written = forked.committed_outputs()
    done = f"written before it stopped: {', '.join(map(printable, written))}; nothing else" if written else \
        "nothing was written"
    click.echo(f"graphfix: error: {printable(stop)}; {done}", err=True)
    ctx.exit(stop.exit_code)


def _timed_out(exc: BaseException) -> TimedOut | None:
    """The `--timeout` stop an exception was raised from or during: one raised while onnxruntime's native module
    initialised came out as `ImportError: initialization failed` (helper 126)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, TimedOut):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _refuse_usage(ctx: click.Context, exc: click.UsageError) -> NoReturn:
    """Click's own usage error (an unknown option, a bad choice, a missing argument) in one line, as graphfix's
    are, naming the command whose --help lists what it takes (click prints three)."""
    command = (exc.ctx or ctx).command_path
    message = printable(exc.format_message()).rstrip(".")
    click.echo(f"graphfix: error: {message} (`{command} --help` lists what it takes)", err=True)
    ctx.exit(exc.exit_code)


class LazyCommands(dict):
    """The subcommands by name, each module imported on first use: `graphfix diagnose --static` must not pay for
    onnxruntime, onnxsim and the proof, which `repair`, `bench` and `stream` import (issue 23). Reads as the
    plain dict click keeps (`in`, `get`, iteration); every known name is present, loaded or not."""

    MODULES = {"diagnose": "diagnose", "repair": "repair", "check": "check", "extract": "extract",
               "freeze": "freeze", "set-shape": "set_shape", "stream": "stream", "bench": "bench", "rules": "rules",
               "explain": "explain"}

    def __missing__(self, name: str) -> click.Command:
        if name not in self.MODULES:
            raise KeyError(name)
        module = importlib.import_module(f"graphfix.cli.{self.MODULES[name]}")
        self[name] = command = _with_timeout(module.command)
        return command

    def __contains__(self, name: object) -> bool:
        return name in self.MODULES or super().__contains__(name)

    def get(self, name, default=None):
        return self[name] if name in self else default  # noqa: SIM401 - this is `get`

    def __iter__(self):
        return iter(self.keys())

    def keys(self):
        return [*self.MODULES, *(name for name in dict.__iter__(self) if name not in self.MODULES)]

    def items(self):
        return [(name, self[name]) for name in self.keys()]

    def values(self):
        return [self[name] for name in self.keys()]

    def __len__(self) -> int:
        return len(self.keys())


@click.group(cls=GraphfixGroup, commands=LazyCommands(), context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="graphfix")
@click.option("--debug", is_flag=True, help="Show tracebacks for internal errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Diagnose, repair, simplify and prove PyTorch-exported ONNX models."""
    ctx.obj = {"debug": debug}
    if debug:
        forked.enable(False)  # models in this process: an internal error's traceback shows where it arose


def check_environment() -> None:
    """Read every GRAPHFIX_* setting once, before any work: a value that is no number is a usage error here
    (exit 2, one line), not an OverflowError in a worker thread half-way through a run."""
    from graphfix.core.budget import shape_seconds
    from graphfix.io.budgets import max_nodes, max_worker_memory, probe_memory_budget, run_budget_seconds

    run_budget_seconds(), max_nodes(), probe_memory_budget(), shape_seconds(), max_worker_memory()


def _with_timeout(command: click.Command) -> click.Command:
    """Give `command` `--timeout SECONDS` (past it the command stops, cleans up, and exits 1) and
    `--max-probe-memory BYTES`."""
    command.params.append(click.Option(["--timeout"], callback=parsed(values.seconds), default=None,
                                       metavar="SECONDS", help="Stop after this many seconds (exit 1)."))
    command.params.append(click.Option(["--max-probe-memory"], callback=parsed(values.byte_size), default=None,
                                       metavar="BYTES", help="Memory the probe's values may take, e.g. 2G "
                                       "(default: a quarter of the available memory)."))
    callback = command.callback

    @functools.wraps(callback)
    def run(*args, timeout=None, max_probe_memory=None, **kwargs):
        check_environment()
        if max_probe_memory is not None:  # read by graphfix.validate.budget, here and in --jobs workers
            os.environ["GRAPHFIX_MAX_PROBE_MEMORY"] = str(max_probe_memory)
        if timeout is None:
            return callback(*args, **kwargs)

        def expire(signum, frame):
            stop_with(TimedOut(f"stopped after {timeout:g} s (--timeout)"))  # past an output's move, if in one

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            return callback(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    command.callback = run
    return command


def main() -> None:
    if not sys.warnoptions:  # a library's warning (numpy's, inside onnxruntime's shape inference) is no line of ours
        warnings.simplefilter("ignore")
    staging.install_signal_cleanup()
    from graphfix.io.budgets import bound_worker_memory

    # each model's work in a child of its own, its memory bounded: a crash in onnxruntime costs that model only
    forked.enable(setup=bound_worker_memory)
    cli.main(prog_name="graphfix")
