"""`[tool.graphfix]` in pyproject.toml: found from the current folder upwards, the way ruff finds its settings.

The search stops at the first pyproject.toml (with or without the table: it marks the project), at the
repository root (a folder holding `.git`), and before a folder anyone may write to (such as /tmp, where another
user could plant a pyproject.toml that switches every rule off): settings come from the project, never from a
shared parent. `--config FILE` names one explicitly; `--isolated` reads none.

    [tool.graphfix]
    select = ["GF001", "GF003"]          # run only these rules (default: all)
    ignore = ["GF005"]                   # never report these (runtime codes included)
    fail-on = "warning"                  # error | warning | info | never
    rtol = 1e-3
    atol = 1e-4

    [tool.graphfix.inputs."models/asr/*.onnx"]
    shapes = { audio = "1x16000" }       # like --shape audio=1x16000
    values = { lengths = "data/lengths.npy" }   # like --input lengths=data/lengths.npy

    [tool.graphfix.per-file-ignores]
    "models/legacy/*.onnx" = ["GF004"]

Globs and value files are relative to the folder of the pyproject.toml; a glob without `/` matches the file name
(fnmatch, so `*` also crosses folders). A value file must lie inside that folder (no absolute path, no `..`, no
link out of it) and be a regular file (a FIFO or a device is refused, never waited on). Command-line options
override the file; unknown keys are an error that names the key.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from graphfix.core import values
from graphfix.core.errors import UsageError
from graphfix.core.read_files import note_read

FAIL_LEVELS = ("error", "warning", "info", "never")
TOP_KEYS = ("select", "ignore", "fail-on", "rtol", "atol", "inputs", "per-file-ignores")
INPUT_KEYS = ("shapes", "values")
MAX_CONFIG_BYTES = 4 << 20  # a pyproject.toml is a few KB
CONFIG_META = "graphfix.core.config"  # where the CLI keeps the running command's Config (click's ctx.meta)


@dataclass(frozen=True)
class ModelSettings:
    """What the configuration says about one model file."""

    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    values: dict[str, Path] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """The `[tool.graphfix]` table of one pyproject.toml, checked; `path` is None for the built-in defaults."""

    path: Path | None = None
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    fail_on: str | None = None
    rtol: float | None = None
    atol: float | None = None
    inputs: tuple[tuple[str, dict[str, tuple[int | None, ...]], dict[str, Path]], ...] = ()
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def root(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    def for_model(self, model: Path) -> ModelSettings:
        """Shapes, values and ignored codes of every glob that matches `model`; later globs win."""
        relative = self.relative(model)
        shapes: dict[str, tuple[int | None, ...]] = {}
        values: dict[str, Path] = {}
        ignore: list[str] = []
        for pattern, glob_shapes, glob_values in self.inputs:
            if matches(pattern, relative):
                shapes.update(glob_shapes)
                values.update(glob_values)
        for pattern, codes in self.per_file_ignores:
            if matches(pattern, relative):
                ignore.extend(c for c in codes if c not in ignore)
        return ModelSettings(shapes, values, tuple(ignore))

    def relative(self, model: Path) -> str:
        """The model's path relative to the config folder (posix), or as given when it lies outside."""
        try:
            return Path(os.path.abspath(model)).relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return Path(model).as_posix()


def matches(pattern: str, relative: str) -> bool:
    pattern = pattern.removeprefix("./")
    if "/" not in pattern:
        return fnmatch.fnmatchcase(relative.rsplit("/", 1)[-1], pattern)
    return fnmatch.fnmatchcase(relative, pattern)


def find_config(start: Path | None = None) -> Path | None:
    """The project's pyproject.toml when it has a [tool.graphfix] table: the first one from `start` (default: cwd)
    upwards, looked for up to the repository root (`.git`) and never in or above a folder others may write to."""
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        if _writable_by_others(candidate):
            return None
        path = candidate / "pyproject.toml"
        if path.is_symlink():  # found, not named: a link would read a file outside the project (helper 58)
            raise UsageError(f"{path}: a symbolic link; a configuration found by search is read only from a "
                             "regular file (name it with --config to read it)")
        if path.is_file():
            return path if "graphfix" in _read_toml(path, follow=False).get("tool", {}) else None
        if (candidate / ".git").exists():
            return None
    return None


def _writable_by_others(folder: Path) -> bool:
    try:
        return bool(folder.stat().st_mode & stat.S_IWOTH)
    except OSError:
        return True


def load_config(path: Path | None = None, *, search: bool = True) -> Config:
    """Parse and check `path`, or the file find_config() finds (when `search`); defaults when there is none."""
    if path is None:
        path = find_config() if search else None
        if path is None:
            return Config()
    elif not Path(path).is_file():
        raise UsageError(f"--config {path}: no such file")
    table = _read_toml(Path(path)).get("tool", {}).get("graphfix", {})
    return parse_config(table, Path(path))


def parse_config(table: Any, path: Path) -> Config:
    where = f"{path} [tool.graphfix]"
    if not isinstance(table, dict):
        raise UsageError(f"{where}: expected a table")
    _no_unknown(table, TOP_KEYS, where)
    fail_on = table.get("fail-on")
    if fail_on is not None and fail_on not in FAIL_LEVELS:
        raise UsageError(f"{where} fail-on: expected one of {', '.join(FAIL_LEVELS)}, got {fail_on!r}")
    return Config(
        path=path,
        select=_codes(table, "select", where),
        ignore=_codes(table, "ignore", where),
        fail_on=fail_on,
        rtol=_tolerance(table, "rtol", where),
        atol=_tolerance(table, "atol", where),
        inputs=_inputs(table.get("inputs", {}), path.parent, where),
        per_file_ignores=_per_file_ignores(table.get("per-file-ignores", {}), where),
    )


def known_codes() -> dict[str, str]:
    """Every code a finding can carry (the registered rules, runtime-only ones included), with its name."""
    from graphfix.core.registry import load_rules

    return {rule.code: rule.name for rule in load_rules()[0]}


def canonical_code(key: str, where: str) -> str:
    """GF003 for 'GF003', 'gf003' or 'broadcast-mismatch'; a UsageError naming `where` otherwise."""
    codes = known_codes()
    by_name = {name: code for code, name in codes.items()}
    code = key.strip().upper() if key.strip().upper() in codes else by_name.get(key.strip())
    if code is None:
        raise UsageError(f"{where}: unknown rule '{key}' (see `graphfix rules`)")
    return code


def probe_options_for(config: Config, model: Path, base, several: bool = False):
    """`base` ValidationOptions (from the command line) completed with the config's shapes and values for
    `model`; what the command line names wins. The shapes a model may lack (`configured`): the configuration's,
    and with `several` models the command line's too (`--shape tokens=1x8` for those of them that take tokens)."""
    import dataclasses

    settings = config.for_model(model)
    arrays = {name: read_npy(file, f"{config.path} [tool.graphfix] inputs: value of '{name}' for {model}",
                             inside=config.root)
              for name, file in settings.values.items() if name not in base.inputs}
    return dataclasses.replace(base, shapes={**settings.shapes, **base.shapes}, inputs={**arrays, **base.inputs},
                               configured=frozenset({**settings.shapes, **base.shapes}) if several
                               else frozenset(settings.shapes) - set(base.shapes))


def read_npy(path: Path, where: str, inside: Path | None = None):
    """The array in a .npy file, opened once without blocking and checked to be a regular file (a FIFO would hang
    a plain open). With `inside`, the file must lie in that folder: no link out of it, not even a last-component
    link (O_NOFOLLOW). Anything else is a UsageError naming `where`."""
    import numpy as np

    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if inside is not None else 0)
    try:
        if inside is not None and not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(inside)):
            raise UsageError(f"{where}: '{path}' leads out of {inside}: refused")
        with os.fdopen(os.open(path, flags), "rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                raise UsageError(f"{where}: '{path}' is not a regular file: refused")
            note_read(stream.fileno(), path)
            value = np.load(stream, allow_pickle=False)
            if not isinstance(value, np.ndarray):  # an .npz archive of several arrays (helper 81)
                value.close()
                raise UsageError(f"{where}: '{path}' is an .npz archive, not a .npy array: save one array with "
                                 "numpy.save")
            return value
    except (OSError, ValueError, EOFError) as exc:
        why = "a symbolic link: refused" if getattr(exc, "errno", None) == errno.ELOOP else str(exc)
        raise UsageError(f"{where}: cannot read '{path}' as a .npy array ({why})") from exc


def filter_findings(findings: list, select: tuple[str, ...] = (), ignore: tuple[str, ...] = ()) -> list:
    """Findings whose code is selected (all when `select` is empty) and not ignored."""
    return [f for f in findings if (not select or f.rule in select) and f.rule not in ignore]


def _read_toml(path: Path, follow: bool = True) -> dict[str, Any]:
    """The TOML document at `path`: a regular file (opened without blocking: a FIFO is refused, not waited on) of
    at most MAX_CONFIG_BYTES; without `follow`, not through a link in its last part (swapped in after a check)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        with os.fdopen(os.open(path, flags), "rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                raise UsageError(f"{path}: cannot read the configuration: not a regular file")
            note_read(stream.fileno(), path)
            text = stream.read(MAX_CONFIG_BYTES + 1)
            if len(text) > MAX_CONFIG_BYTES:
                raise UsageError(f"{path}: cannot read the configuration: over {MAX_CONFIG_BYTES:,} bytes")
            return tomllib.loads(text.decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the configuration: {exc}") from exc
    except ValueError:  # tomllib's int() of an integer too long for CPython to convert
        raise UsageError(f"{path}: cannot read the configuration: an integer of thousands of digits") from None
    except RecursionError:
        raise UsageError(f"{path}: cannot read the configuration: nested too deeply") from None


def _no_unknown(table: dict, known: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in known:
            raise UsageError(f"{where}: unknown key '{key}' (known: {', '.join(known)})")


def _codes(table: dict, key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{where} {key}: expected a list of rule codes like [\"GF001\"]")
    return tuple(canonical_code(v, f"{where} {key}") for v in value)


def _tolerance(table: dict, key: str, where: str) -> float | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float):
        raise UsageError(f"{where} {key}: expected a number >= 0, got {value!r}")
    return values.tolerance(value, f"{where} {key}")


def _inputs(table: Any, root: Path, where: str):
    where = f"{where} inputs"
    if not isinstance(table, dict):
        raise UsageError(f"{where}: expected a table of globs, e.g. [tool.graphfix.inputs.\"models/*.onnx\"]")
    globs = []
    for pattern, spec in table.items():
        here = f"{where} \"{pattern}\""
        if not isinstance(spec, dict):
            raise UsageError(f"{here}: expected a table with shapes = {{...}} and/or values = {{...}}")
        _no_unknown(spec, INPUT_KEYS, here)
        try:
            given = _strings(spec.get("shapes", {}), f"{here} shapes")
            shapes = {name: parse_dims(dims) for name, dims in given.items()}
        except UsageError as exc:
            raise UsageError(f"{here} shapes: {exc}") from exc
        files = _strings(spec.get("values", {}), f"{here} values")
        globs.append((pattern, shapes, {name: _inside(root, file, f"{here} values {name}")
                                        for name, file in files.items()}))
    return tuple(globs)


def _inside(root: Path, file: str, where: str) -> Path:
    """`root / file` for a relative path that stays in `root` (no `..`, not absolute, no `~`)."""
    relative = PurePosixPath(file)
    if relative.is_absolute() or ".." in relative.parts or file.startswith("~") or "\0" in file:
        raise UsageError(f"{where}: '{file}' must be a path inside {root} (relative, without '..')")
    return root / relative


def _per_file_ignores(table: Any, where: str):
    where = f"{where} per-file-ignores"
    if not isinstance(table, dict):
        raise UsageError(f"{where}: expected a table of glob = [codes]")
    return tuple((pattern, _codes({"codes": codes}, "codes", f"{where} \"{pattern}\""))
                 for pattern, codes in table.items())


def _strings(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise UsageError(f"{where}: expected a table of NAME = \"...\" strings")
    return dict(value)


# --- NAME=VALUE and NAME=DIMS arguments (command line and configuration alike) ---
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

def parse_dims(text: str) -> tuple[int | None, ...]:
    """'1x16000' -> (1, 16000); 'Bx?' -> (None, None) (symbolic dims stay free)."""
    try:
        dims = [values.dim(part, "") if part.strip() else "" for part in text.lower().split("x")]
    except UsageError:
        dims = [""]
    if "" in dims:
        raise UsageError(f"bad shape '{text}': expected dims like 1x16000 or Bx? (digits, names, ?)")
    return tuple(d if isinstance(d, int) else None for d in dims)


def parse_shapes(option: str, values: tuple[str, ...]) -> dict[str, tuple[int | None, ...]]:
    return {name: parse_dims(dims) for name, dims in name_values(option, values).items()}
