"""Errors graphfix reports to its user as one line, never as a traceback."""


def printable(text: object) -> str:
    """`text` with every character that is not printable (controls, newlines, escapes, bidi overrides, zero-width
    marks) written as its Python escape (`\\n`, `\\x1b`, `\\u202e`): one line, shown as it is."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def printable_path(path: object) -> str:
    """A path as the first word of an output line: `printable`, and `./` before a relative one that starts with a
    colon, so that no file name begins a line with `::` (security review 148: a model committed as `::error
    file=README.md::forged.onnx`, or `::add-mask::`, was a command to GitHub Actions' log reader)."""
    text = printable(path)
    return f"./{text}" if text.startswith(":") else text


class GraphfixError(Exception):
    """Base class: a problem the user can act on. The CLI prints `str(error)` and exits with `exit_code`."""

    exit_code = 1


class InputError(GraphfixError):
    """The input cannot be used: missing, damaged, unsafe or unsupported (exit 2)."""

    exit_code = 2


class UsageError(GraphfixError):
    """The command line or the configuration is wrong (exit 2)."""

    exit_code = 2


class RuleRegistryError(GraphfixError):
    """Rules could not be registered: a duplicate code, or a third-party rule claiming the GF prefix (exit 2)."""

    exit_code = 2


class InternalError(GraphfixError):
    """graphfix itself failed (a rule that cannot load, a bug): never a finding about the user's model (exit 2)."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(f"internal error: {message} (rerun with --debug for the traceback)")


class OutputError(GraphfixError):
    """An output cannot be written: read-only folder, disk full, a folder where the file goes (exit 2)."""

    exit_code = 2


class TimedOut(BaseException):
    """The command ran past `--timeout` and stopped (exit 1: nothing was completed or proven). A BaseException,
    like KeyboardInterrupt, so that no `except Exception` on the way takes it for a model error."""

    exit_code = 1
