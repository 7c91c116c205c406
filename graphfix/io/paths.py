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
    for here, dirs, files in _tree(os.fspath(folder)):
        place = Path(here)
        for name in dirs if folders else ():
            if not os.path.islink(place / name):
                yield place / name
        for name in files:
            path = place / name
            if os.path.islink(path) and os.path.commonpath([top, os.path.realpath(path)]) != top:
                continue  # a link out of the tree
            yield path


def _tree(top: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk(top, followlinks=False)` with names sorted, on an explicit stack: Python 3.11's own walk recurses
    once per level, and a tree ~1,000 folders deep stopped every command with a RecursionError (helper 148).
    Folders that cannot be listed are passed over, as os.walk does; links to folders are listed, not entered."""
    stack = [top]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as listing:
                entries = list(listing)
        except OSError:
            continue
        dirs, files, inner = [], [], []
        for entry in sorted(entries, key=lambda e: e.name):
            if not _is_dir(entry):
                files.append(entry.name)
                continue
            dirs.append(entry.name)
            if not _is_link(entry):
                inner.append(os.path.join(here, entry.name))
        yield here, dirs, files
        stack.extend(reversed(inner))  # depth first, in name order, as os.walk goes


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_link(entry: os.DirEntry) -> bool:
    try:
        return entry.is_symlink()
    except OSError:
        return False


def _matches(pattern: tuple[str, ...], names: tuple[str, ...]) -> bool:
    """Whether `names` (a path's parts) match `pattern`'s parts, `**` standing for any number of names that do not
    start with a dot; the set of pattern places reachable after each name is carried along, so a path thousands
    of folders deep costs no recursion (the recursive matcher hit the recursion limit, helper 148)."""
    places = _past_globstars(pattern, {0})
    for name in names:
        reached = set()
        for p in places:
            if p == len(pattern):
                continue
            if pattern[p] == "**":
                if not name.startswith("."):
                    reached.add(p)
            elif _name_matches(pattern[p], name):
                reached.add(p + 1)
        places = _past_globstars(pattern, reached)
        if not places:
            return False
    return len(pattern) in places


def _past_globstars(pattern: tuple[str, ...], places: set[int]) -> set[int]:
    """`places` and every place reached from one by letting a `**` there match no name."""
    grown = set(places)
    for p in sorted(places):
        while p < len(pattern) and pattern[p] == "**":
            p += 1
            grown.add(p)
    return grown


def _name_matches(pattern: str, name: str) -> bool:
    if name.startswith(".") and not pattern.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, pattern)
