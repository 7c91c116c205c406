"""Turning command-line PATHs into model files: a file is itself, a folder is searched for *.onnx, a quoted glob
('models/**/*.onnx') is matched against the files below its fixed part.

Folders are walked without following symbolic links to folders (a link loop, or a link out of the tree, is not
entered), and a linked file found on the way is kept only when it points inside the walked folder: what a
PATH names is what its tree holds. The walk itself is bounded by the real tree.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from graphfix.core.errors import InputError

GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class ModelPath:
    path: Path
    root: Path  # the PATH argument it came from; outputs keep their place relative to it

    @property
    def relative(self) -> Path:
        return self.path.relative_to(self.root) if self.root != self.path else Path(self.path.name)


def expand_paths(paths: tuple[Path, ...] | list[Path]) -> list[ModelPath]:
    """Models named by PATHs, in order; missing files are kept so that loading reports them one by one."""
    found: list[ModelPath] = []
    for path in paths:
        if path.is_dir():
            models = [ModelPath(p, path) for p in sorted(walk(path)) if p.suffix == ".onnx" and p.is_file()]
            if not models:
                raise InputError(f"{path}: is a folder with no .onnx model in it")
            found.extend(models)
        else:
            found.append(ModelPath(path, path))
    return found


def output_path(text: str | os.PathLike) -> Path:
    """An output path as given, but for each `..` after a folder that does not exist yet, which takes that folder
    back: graphfix would make it only to climb out of it, and leave it there empty (`-o out/sub/../x.onnx`:
    helper 104). Where the folder exists the `..` stays, for the system to follow as the user's shell would."""
    path = Path(text)
    kept: list[str] = []
    for part in path.parts:
        above = Path(*kept[:-1]) if len(kept) > 1 else Path(".")  # a file there: `..` stays, and the system fails
        if part == ".." and kept and kept[-1] not in ("..", path.anchor) and not os.path.lexists(Path(*kept)) \
                and (os.path.isdir(above) or not os.path.lexists(above)):
            kept.pop()
        else:
            kept.append(part)
    return Path(*kept) if kept else Path(".")


def expand_globs(paths: tuple[Path, ...] | list[Path]) -> list[Path]:
    """Quoted globs (`'models/**/*.onnx'`) become the paths they match; other PATHs stay as given."""
    expanded: list[Path] = []
    for path in paths:
        text = str(path)
        if path.exists() or not GLOB_CHARS & set(text):
            expanded.append(path)
            continue
        matched = glob_paths(text)
        if not matched:
            raise InputError(f"{text}: no file matches this pattern")
        expanded.extend(matched)
    return expanded


def glob_paths(pattern: str) -> list[Path]:
    """Files and folders matching `pattern` the way the shell's globstar does (`**` is any number of folders,
    `*` does not match a leading dot), found by `walk` below the pattern's fixed leading folders."""
    parts = pattern.split("/")
    fixed = 0
    while fixed < len(parts) - 1 and not GLOB_CHARS & set(parts[fixed]):
        fixed += 1
    base = Path("/".join(parts[:fixed]) or ("/" if pattern.startswith("/") else "."))
    wanted = tuple(p for p in parts[fixed:] if p)
    if not base.is_dir():
        return []
    matched = [path for path in walk(base, folders=True)
               if _matches(wanted, path.relative_to(base).parts)]
    return sorted(matched)


def walk(folder: Path, folders: bool = False) -> Iterator[Path]:
    """Every file below `folder` (and every folder, when `folders`), sorted per folder; links to folders are not
    entered, and linked files are kept only when they resolve inside `folder`."""
    top = os.path.realpath(folder)
    for here, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        place = Path(here)
        for name in dirs if folders else ():
            if not os.path.islink(place / name):
                yield place / name
        for name in sorted(files):
            path = place / name
            if os.path.islink(path) and os.path.commonpath([top, os.path.realpath(path)]) != top:
                continue  # a link out of the tree
            yield path


def _matches(pattern: tuple[str, ...], names: tuple[str, ...]) -> bool:
    @cache
    def match(p: int, n: int) -> bool:
        if p == len(pattern):
            return n == len(names)
        if pattern[p] == "**":
            return match(p + 1, n) or (n < len(names) and not names[n].startswith(".") and match(p, n + 1))
        return n < len(names) and _name_matches(pattern[p], names[n]) and match(p + 1, n + 1)

    return match(0, 0)


def _name_matches(pattern: str, name: str) -> bool:
    if name.startswith(".") and not pattern.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, pattern)
