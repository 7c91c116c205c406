"""The destination side of every file graphfix writes (models, their data, reports): what it may replace and delete.

- Atomic: a file is written in a staging folder beside its destination and renamed into place (see
  `graphfix.io.saving`, and `write_atomic` for a report).
- No link followed: a destination that is a symbolic link is refused, as is anything there that is not a regular
  file (a folder, a FIFO, a device).
- Never an input of the same run: a destination is compared with the run's input files by device and inode, not
  by name (a hard link or another spelling of the input is caught too, and so is the file an input read through
  a symbolic link names).
- A model's data file is named after the model (`OUT.data`, or `OUT.1.data`, `OUT.2.data`... while the replaced
  graph still reads the first or a file has it) and never overwrites a file that exists.
- graphfix deletes only what it made in the same run: the data a replaced model read is kept, and the result says
  so (a model in another folder may read it: helper 104's `../main.onnx` reading `models/a.onnx.data`).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from graphfix.core import forked
from graphfix.core.critical import uninterrupted
from graphfix.core.errors import OutputError, UsageError
from graphfix.core.read_files import read_as
from graphfix.io.staging import create, open_folders, open_stage, remove, remove_made, staging_dir

if TYPE_CHECKING:
    from graphfix.io.loading import LoadedModel


def check_target(destination: Path, inputs: Iterable[Path] = (), *, in_place: bool | None = None,
                 at: int | None = None) -> None:
    """Refuse (exit 2) a destination that is a link or not a regular file, or that is one of `inputs` (unless
    `in_place`, where replacing the input is what was asked; None where the command has no --in-place to
    suggest). `at`: a descriptor of its folder (`open_folder`), read instead of its path."""
    try:
        info = destination.lstat() if at is None else os.stat(destination.name, dir_fd=at, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (a file in the way is said when writing)
        return
    except OSError as exc:
        raise OutputError(f"cannot write {destination}: {(exc.strerror or str(exc)).lower()}") from None
    if stat.S_ISLNK(info.st_mode):
        raise OutputError(f"cannot write {destination}: it is a symbolic link (graphfix writes no file through a "
                          "link, nor replaces one; give the path of a file)")
    if stat.S_ISDIR(info.st_mode):
        raise OutputError(f"cannot write {destination}: is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise OutputError(f"cannot write {destination}: it exists and is not a regular file")
    if (read := read_as(info)) is not None:  # an array or the configuration: never replaced, --in-place or not
        raise UsageError(f"{destination}: would overwrite {read}, which this run reads")
    if in_place:
        return
    for source in inputs:
        if same_file(destination, source):
            raise UsageError(f"{destination}: would overwrite the input {source}"
                             + ("; use --in-place to replace it" if in_place is False and source.suffix == ".onnx"
                                else ""))


def same_file(destination: Path, source: Path, at: int | None = None) -> bool:
    """Whether writing `destination` would replace `source` (device and inode): the destination's own name (a link
    there is refused before), the source's name and the file it names through links (an input read as `link.onnx`
    is the file `real.onnx`, and writing `real.onnx` replaces it). `at`: the destination's folder, held."""
    try:
        target = os.lstat(destination) if at is None else os.stat(destination.name, dir_fd=at, follow_symlinks=False)
    except OSError:
        return False
    read = []
    for look in (os.lstat, os.stat):
        try:
            read.append(look(source))
        except OSError:
            continue
    return any((target.st_dev, target.st_ino) == (info.st_dev, info.st_ino) for info in read)


def data_name(destination: Path, replaced_data: Iterable[Path]) -> str:
    """`NAME.data`, or `NAME.1.data` (`NAME.2.data`...) while the model being replaced still reads the first or a
    file has it: the first such name that is free."""
    return data_names(destination, replaced_data, 1)[0]


def data_names(destination: Path, replaced_data: Iterable[Path], count: int) -> list[str]:
    """`count` data file names for `destination`, all derived from its own name (`NAME.data`, `NAME.1.data`...),
    none of them one the model being replaced still reads or a file has: a model's data never goes under a name or
    into a folder the model chose (a downloaded model naming `conftest.py` would have it written beside the
    output), and never over a file (the data a replaced model read is kept: graphfix deletes only what it made in
    the same run)."""
    in_use = {path.name for path in replaced_data if path.parent == destination.parent}
    chosen: list[str] = []
    for n in itertools.count():
        name = f"{destination.name}.{n}.data" if n else f"{destination.name}.data"
        if name not in in_use and not os.path.lexists(destination.parent / name):
            chosen.append(name)
            if len(chosen) == count:
                return chosen
    raise AssertionError("unreachable")  # a folder holds finitely many names


def refuse_linked_folders(root: Path, destination: Path) -> None:
    """Refuse (exit 2) a destination reached through a symbolic link in a folder below `root`, the output folder
    the user named (which may itself be a link: the user named it). A checkout can commit `out/x -> ~/.ssh`, and
    `--output-dir out` would then write the model and its data there. Each folder is read with lstat; one that does
    not exist yet is made by graphfix, which calls this again once it has."""
    below = [folder for folder in destination.parents if root in folder.parents]
    for folder in reversed(below):  # from the root down: a missing folder has no links below it
        try:
            info = folder.lstat()
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise OutputError(f"cannot write {destination}: {(exc.strerror or str(exc)).lower()}") from None
        if stat.S_ISLNK(info.st_mode):
            raise OutputError(f"cannot write {destination}: {folder} is a symbolic link inside the output folder "
                              f"{root} (graphfix writes nothing through a link there)")
        if not stat.S_ISDIR(info.st_mode):
            raise OutputError(f"cannot write {destination}: {folder} is not a folder")


def open_folder(destination: Path, root: Path | None) -> int:
    """A descriptor of the destination's folder, opened from `root` (the output folder the user named, which may
    itself be a link) one folder at a time, never through a link: the commit renames through it, so a folder
    swapped for a link after `refuse_linked_folders` looked is never followed (the file lands in the folder that
    was checked, or is refused). Without `root` (a path the user named whole) the folder is opened as named."""
    below = destination.parent.relative_to(root).parts if root is not None and root in destination.parents else None
    fd = os.open(destination.parent if below is None else root, os.O_RDONLY | os.O_DIRECTORY)
    for part in below or ():
        try:
            if part in (".", ".."):
                raise OSError(errno.ELOOP, "a step out of the output folder")
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            raise OutputError(f"cannot write {destination}: {part} is a symbolic link or no folder inside the "
                              f"output folder {root} (graphfix writes nothing through a link there)") from None
        finally:
            os.close(fd)
        fd = inner
    return fd


def move_new(name: str, stage: int, folder: int, target: Path) -> None:
    """Move the file `name` from the staging folder `stage` to the same name in `folder` (descriptors: no link
    followed on the way), where no file may have it (`target` names it in messages): a hard link made atomically
    (it fails on an existing name), then the staged name dropped. Where the file system has no hard links,
    checked, then renamed."""
    try:
        os.link(name, name, src_dir_fd=stage, dst_dir_fd=folder, follow_symlinks=False)
    except FileExistsError:
        raise OutputError(f"cannot write {target}: a file of that name appeared while graphfix wrote it; "
                          "it was kept") from None
    except OSError:
        try:
            os.stat(name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            os.replace(name, name, src_dir_fd=stage, dst_dir_fd=folder)
            return
        raise OutputError(f"cannot write {target}: a file of that name appeared while graphfix wrote it; "
                          "it was kept") from None
    os.unlink(name, dir_fd=stage)


def write_atomic(destination: Path, text: str, inputs: Iterable[Path] = ()) -> None:
    """Write a text file (a report) as models are written: staged beside it, then renamed into place; refused
    when it is a link, not a regular file, or one of `inputs`."""
    check_target(destination, inputs)
    made: tuple[Path, ...] = ()
    at = None
    try:  # each folder made, the report staged and renamed through descriptors: no link swapped in is followed
        at, made = open_folders(destination.parent)
        folder = staging_dir(destination, at)
    except BaseException as exc:
        if at is not None:
            os.close(at)
        remove_made(made)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {destination}: {(exc.strerror or str(exc)).lower()}") from None
        raise
    try:
        stage = open_stage(folder, at)
        try:
            with create("report", stage) as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            check_target(destination, inputs, at=at)  # again: what is there now is what the rename replaces
            with uninterrupted():  # a stop right after the rename must say the report was written (helper 127)
                os.replace("report", destination.name, src_dir_fd=stage, dst_dir_fd=at)
                forked.committed(str(destination))
        finally:
            os.close(stage)
        made = ()  # they hold the report now
    except OSError as exc:
        raise OutputError(f"cannot write {destination}: {(exc.strerror or str(exc)).lower()}") from None
    finally:
        remove(folder, at)
        os.close(at)
        remove_made(made)


def input_files(loaded: LoadedModel) -> list[Path]:
    """The files a loaded model was read from: the model, then its external data files."""
    if loaded.path is None:
        return []
    return [loaded.path, *dict.fromkeys(ref.path(loaded.base_dir) for ref in loaded.external)]


def check_destination(loaded: LoadedModel, output: Path, in_place: bool | None) -> None:
    """Never overwrite the input (or its external data) unless --in-place says so (None: the command has none);
    never through a link."""
    check_target(output, input_files(loaded), in_place=in_place)
