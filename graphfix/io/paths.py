"""Turning command-line PATHs into model files: a file is itself, a folder is searched for *.onnx."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from graphfix.core.errors import InputError


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
            models = [ModelPath(p, path) for p in sorted(path.rglob("*.onnx")) if p.is_file()]
            if not models:
                raise InputError(f"{path}: is a folder with no .onnx model in it")
            found.extend(models)
        else:
            found.append(ModelPath(path, path))
    return found
