"""Writing models atomically, with external data beside the output.

A model is first *staged*: written with its external data into a hidden temporary folder next to the
destination, where onnxruntime can validate it from disk. Only `commit()` moves the files into place (one
`os.replace` each, data before model), so a reader never sees a half-written model and a failed validation
leaves nothing behind. Every staged file is written through the descriptor of its staging folder, found from the
output folder without following a link (`StagedModel.staging`): a folder swapped for a link is never followed.
Replacing a model that has external data (`--in-place`, or an earlier output) is atomic
for the pair: the new data goes under a name no file has (`NAME.data`, else `NAME.1.data`), then the graph
replaces the old one, and only then is the old data removed, if graphfix may (see `graphfix.io.targets`: only data
named after the model that nothing else reads); a crash in between leaves the old pair usable.
Weights kept in the source's external data are copied in chunks, never loaded whole.

A light model (see `graphfix.io.weights`) is written inline record by record (`graphfix.io.streaming`), so no
full-size copy of the model is ever built in memory.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import onnx
from onnx import TensorProto

from graphfix.core import forked
from graphfix.core.critical import uninterrupted
from graphfix.core.errors import OutputError
from graphfix.io.external_data import data_file, is_stub, model_tensors, tensor_nbytes
from graphfix.io.externalized import with_external_data
from graphfix.io.held import HeldFile, copy_used
from graphfix.io.replaced import Existing
from graphfix.io.staging import (
    create,
    forget,
    identity,
    open_folders,
    open_stage,
    remove,
    remove_made,
    staging_dir,
)
from graphfix.io.streaming import write_initializer, write_streaming
from graphfix.io.targets import (
    check_target,
    data_name,
    data_names,
    input_files,
    move_new,
    open_folder,
    refuse_linked_folders,
    same_file,
)
from graphfix.io.weights import Weights, has_stubs, resolve, stub_names
from graphfix.io.write_bound import check_write_bound

PROTOBUF_LIMIT = 2**31 - 1


@dataclass
class StagedModel:
    """A model written to a temporary folder beside its destination, waiting for `commit()` or `discard()`."""

    temp_dir: Path
    destination: Path
    data_name: str | None
    prewritten: frozenset[str] = frozenset()  # weights already in the file (see stage_weights)
    copied: tuple[str, ...] = ()  # external data files copied under names derived from the output's (stage_copy)
    referenced: tuple[str, ...] = ()  # data files the staged model reads that are already in place
    protected: frozenset[Path] = frozenset()  # never removed by commit (the input's data, unless replaced)
    replacing: Existing | None = None  # the file at the destination when staging began
    kept: tuple[str, ...] = ()  # after commit: why data of the replaced model was kept
    within: Path | None = None  # the output folder the user named: no link below it is written through
    input_mode: int | None = None  # the input model's permission bits (see inherit_mode)
    made: tuple[Path, ...] = ()  # the destination's folders staging made, deepest first: removed unless committed
    stage_id: tuple[int, int] | None = None  # the staging folder's device and inode: the one commit moves from
    folder_fd: int | None = None  # while committing: the destination's folder, held (see `open_folder`)

    @property
    def path(self) -> Path:
        return self.temp_dir / self.destination.name

    def commit(self) -> Path:
        """Make the staged files durable (validation ran while the kernel wrote them back), then move them: data
        first (under names no file has), the graph last; then the data the replaced graph used is removed where
        graphfix may remove it (`kept` says why the rest stays). Every step after the checks goes through the
        descriptors of the destination's folder and of the staging folder, opened without following a link
        (`open_folder`): a folder below `--output-dir` swapped for a link after its check is never followed."""
        try:
            with writing(self.destination, self):
                return self._commit()
        finally:
            if self.folder_fd is not None:
                os.close(self.folder_fd)
                self.folder_fd = None

    def _commit(self) -> Path:
        check_target(self.destination)
        if self.within is not None:
            refuse_linked_folders(self.within, self.destination)
        self.folder_fd = folder = open_folder(self.destination, self.within)
        stage = open_stage(self.temp_dir, folder, self.stage_id)  # a folder put in its place: never validated
        try:
            return self._move(folder, stage)
        finally:
            os.close(stage)

    @contextmanager
    def staging(self) -> Iterator[int]:
        """The staging folder's descriptor, found from the output folder without following a link (`open_folder`)
        and only while it is the one staging made (`open_stage`): each file is staged through it (`create`)."""
        folder = open_folder(self.destination, self.within)
        try:
            stage = open_stage(self.temp_dir, folder, self.stage_id)
        finally:
            os.close(folder)
        try:
            yield stage
        finally:
            os.close(stage)

    def _move(self, folder: int, stage: int) -> Path:
        check_target(self.destination, at=folder)  # what is there now is what the rename replaces: never a link
        replaced = (self.replacing or Existing.of(self.destination)).data_files_now(self.destination, folder)
        self._set_mode(folder, stage)
        moved: list[str] = []
        forked.committing(str(self.destination))
        with uninterrupted():  # a stop meanwhile (--timeout, SIGTERM) waits: the data is never left alone
            try:
                for name in (*self.copied, *([self.data_name] if self.data_name else [])):
                    _fsync(name, stage)
                    move_new(name, stage, folder, self.destination.parent / name)
                    moved.append(name)
                name = self.destination.name
                _fsync(name, stage)
                os.replace(name, name, src_dir_fd=stage, dst_dir_fd=folder)
            except BaseException:
                for name in moved:  # made by this run, read by nothing yet
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=folder)
                raise
            self.made = ()  # they hold the output now
            forked.committed(str(self.destination))
        new = {self.destination.parent / name for name in (*self.copied, *self.referenced, self.data_name or "")}
        for old in replaced:  # graphfix deletes only what it made in this run: another model may read them
            if old not in new and old != self.destination and not any(same_file(old, p, folder)
                                                                       for p in self.protected):
                self.kept += (f"kept {old}, the replaced model's data: graphfix deletes no file it did not make in "
                              "this run (another model may read it); remove it once none does",)
        self.discard()
        return self.destination

    def _set_mode(self, folder: int, stage: int) -> None:
        """Give the staged model and data the permission bits of the file they replace (no more for others than
        every input file gives them), else the input's, never more than a new file gets: a private model (0600) or
        data repaired or replaced in place stays private, and an output the user made private stays so. Each file
        is changed through a descriptor (a link put in the staging folder would have chmod change the file it
        names)."""
        staged = [self.destination.name, *(name for name in (*self.copied, self.data_name) if name)]
        try:  # a regular file: check_target said so
            mode = stat.S_IMODE(os.stat(self.destination.name, dir_fd=folder, follow_symlinks=False).st_mode)
            if self.input_mode is not None:  # its owner's bits, and no one else's more than every input gives
                mode = (mode & 0o700) | (mode & self.input_mode & 0o077)  # private data in place (helper 106)
        except FileNotFoundError:
            if self.input_mode is None:
                return
            new = os.stat(self.destination.name, dir_fd=stage, follow_symlinks=False)
            mode = self.input_mode & stat.S_IMODE(new.st_mode)  # as a new file gets it (umask)
        for name in staged:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=stage)
            try:
                os.fchmod(fd, mode & 0o777)
            finally:
                os.close(fd)

    def sync(self) -> StagedModel:
        """Write the staged files back to disk now (on the staging thread, while validation runs), so that the
        fsyncs of `commit` find nothing left to write."""
        with writing(self.destination, self), self.staging() as stage:  # an I/O error is the output's (one line)
            for name in (*self.copied, *([self.data_name] if self.data_name else []), self.destination.name):
                _fsync(name, stage)
        return self

    def discard(self) -> None:
        """Remove the staging folder and, where nothing was committed, the folders made for the output (a failed
        repair into `new1/new2/out.onnx` left both, empty)."""
        self._remove_stage()
        remove_made(self.made)
        self.made = ()

    def _remove_stage(self) -> None:
        """Remove the staging folder where it was made: through the folder a commit holds, else found again from
        the output folder without following a link, and only while it is the one staging made (its inode). A
        folder swapped for a link to elsewhere, holding a copy of it, had that copy removed."""
        folder = self.folder_fd
        try:
            if folder is None:
                folder = open_folder(self.destination, self.within)
            remove(self.temp_dir, folder, self.stage_id)
        except (OSError, OutputError):
            pass  # gone, or not where it was made: nothing graphfix may remove there
        finally:
            forget(self.temp_dir)  # never removed by its path at exit either
            if folder is not None and folder != self.folder_fd:
                os.close(folder)


def needs_external_data(proto: onnx.ModelProto) -> bool:
    """True when the model keeps weights outside the protobuf or would not fit in one (stubs count as the
    weights they stand for)."""
    inline = 0
    for _where, tensor in model_tensors(proto):
        if tensor.data_location == TensorProto.EXTERNAL and not is_stub(tensor):
            return True
        inline += tensor_nbytes(tensor)
    return inline > PROTOBUF_LIMIT - (64 << 20)


def stage_model(proto: onnx.ModelProto, destination: str | Path, source_dir: Path | None = None,
                weights: Weights | None = None, within: Path | None = None) -> StagedModel:
    """Write `proto` into a temporary folder beside `destination`; external data goes to `<name>.data`.
    A light `proto` is written with the `weights` its stubs stand for. `within`: the output folder the user
    named (see `_new_stage`). External data that would write more than the source's data files hold (tensors
    overlapping) is refused first, before any file or folder is made (`check_write_bound`)."""
    check_write_bound(proto, source_dir)
    staged = _new_stage(Path(destination), within)
    with writing(staged.destination, staged), staged.staging() as stage:
        if needs_external_data(proto):
            staged.data_name = data_name(staged.destination, staged.replacing.data_files)
            with create(staged.data_name, stage) as data:
                proto = with_external_data(proto, data, staged.data_name, source_dir, weights or {})
        with create(staged.destination.name, stage) as f:
            if has_stubs(proto):
                write_streaming(proto, weights or {}, f)
            else:
                f.write(proto.SerializeToString())
    return staged


def stage_weights(destination: str | Path, proto: onnx.ModelProto, weights: Weights,
                  within: Path | None = None) -> StagedModel:
    """Start staging a light, inline model with its weights alone, before its graph is final (the weights are
    most of the bytes, and fixes or onnxsim change the graph, not them). `finish_stage` adds the rest."""
    staged = _new_stage(Path(destination), within)
    with writing(staged.destination, staged), staged.staging() as stage, create(staged.destination.name, stage) as f:
        for tensor in proto.graph.initializer:
            if is_stub(tensor):
                write_initializer(resolve(tensor, weights), f)
    staged.prewritten = stub_names(proto)
    return staged


def finish_stage(staged: StagedModel, proto: onnx.ModelProto, weights: Weights) -> StagedModel:
    """Append the graph and every initializer not written yet; the model's stubs must be the prewritten ones."""
    if stub_names(proto) != staged.prewritten:
        raise ValueError("the final model's weights differ from the ones written ahead")
    with writing(staged.destination, staged), staged.staging() as stage, \
            create(staged.destination.name, stage, append=True) as f:
        write_streaming(proto, weights, f, skip=staged.prewritten)
    return staged


def stage_copy(source: Path, destination: str | Path, data_files: Mapping[Path, int] | Iterable[Path] = (),
               model_file: HeldFile | None = None, within: Path | None = None) -> StagedModel:
    """Stage a copy of a model file and of its external data files (an unchanged model is written as it came).
    Each data file is copied under a name derived from the output's (`OUT.data`, `OUT.1.data`...), never under
    the name the model gives it: a downloaded model naming `conftest.py` or `.config/autostart/x.desktop` would
    otherwise have graphfix create those beside the output. Only the locations in the (small) graph are rewritten;
    the model file is copied as it is where no data file is copied. Each is read from the descriptor loading
    checked (`model_file`, the data files the model's folder holds; see graphfix.io.held), never from its path
    again. A data file given with the bytes its tensors reach is copied up to there (see `copy_used`)."""
    staged = _new_stage(Path(destination), within)
    with writing(staged.destination, staged), staged.staging() as stage:
        model_file = model_file or HeldFile(source, str(source))
        files = dict.fromkeys(data_files)  # once: `data_files` may be an iterator
        ends = data_files if isinstance(data_files, Mapping) else {}
        referenced = [data for data in files if _already_beside(staged.destination, source, data)]
        to_copy = [data for data in files if data not in referenced]
        names = data_names(staged.destination, staged.replacing.data_files, len(to_copy)) if to_copy else []
        renamed = dict(zip(to_copy, names, strict=True))
        for data, name in renamed.items():
            with create(name, stage) as out:
                copy_used(data_file(source.parent, str(data.relative_to(source.parent))), out, ends.get(data))
        with create(staged.destination.name, stage) as out:
            if renamed:
                _write_relocated(model_file, source.parent, renamed, out)
            else:
                copy_used(model_file, out)
        staged.copied = tuple(names)
        staged.referenced = tuple(str(data.relative_to(source.parent)) for data in referenced)
    return staged


def _already_beside(destination: Path, source: Path, data: Path) -> bool:
    """Whether the output, written where the input is (`--in-place`, or beside it), finds the input's data file at
    the location the model gives: then it is read where it is, and nothing is written for it."""
    return same_file(destination.parent / data.relative_to(source.parent), data)


def _write_relocated(model_file: HeldFile, source_dir: Path, renamed: Mapping[Path, str], out: BinaryIO) -> None:
    """Write the model held in `model_file` to `out` with each external location that names a file of `renamed`
    (by its path in `source_dir`) pointing to that file's new name. A model with external data is small: parsing
    it and writing it again costs little (graphfix.io.wire)."""
    proto = onnx.ModelProto()
    proto.ParseFromString(model_file.read())
    for _where, tensor in model_tensors(proto):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        for entry in tensor.external_data:
            if entry.key == "location" and source_dir / entry.value in renamed:
                entry.value = renamed[source_dir / entry.value]
    out.write(proto.SerializeToString())


def protect_inputs(staged: StagedModel, loaded) -> StagedModel:
    """The input's data files are never named as replaced by a commit that does not replace the input itself; the
    output takes the bits every input file has (the model's and its data's: a 0600 data file beside a 0644 model,
    as `onnx.save` writes them, made the output's data 0644: helper 104) where it replaces no file (see
    `StagedModel._set_mode`)."""
    if loaded.path is not None and not same_file(staged.destination, loaded.path):
        staged.protected = frozenset(input_files(loaded)[1:])
    if loaded.model_file is not None:  # the most private of the input's files: private weights stay so
        held = [loaded.model_file, *(loaded.files.opened() if loaded.files is not None else ())]
        staged.input_mode = functools.reduce(operator.and_, (stat.S_IMODE(os.fstat(f.fd).st_mode) for f in held))
    return staged


def _new_stage(destination: Path, within: Path | None = None) -> StagedModel:
    """The staging folder beside `destination`, its folders made first. Below `within` (the output folder the
    user named) no folder may be a link: checked before the folders are made, then each folder is made and opened
    without following a link (`open_folders`), and the staging folder is made in the one opened."""
    with writing(destination):
        for folder in (destination.parent, *destination.parent.parents):
            if folder.exists() and not folder.is_dir():
                raise NotADirectoryError(20, f"{folder} is not a folder")
        if within is not None:
            refuse_linked_folders(within, destination)
        folder, made = open_folders(destination.parent, within)
        try:
            check_target(destination, at=folder)  # a link, a folder or a FIFO there is refused
            # learnt on the staging thread: reading what a big existing output refers to takes 0.4 s per 400 MB
            temp_dir = staging_dir(destination, folder)
            return StagedModel(temp_dir, destination, None, replacing=Existing.of(destination, folder),
                               within=within, made=made, stage_id=identity(temp_dir))
        except BaseException:
            remove_made(made)
            raise
        finally:
            os.close(folder)


@contextmanager
def writing(destination: Path, staged: StagedModel | None = None) -> Iterator[None]:
    """While writing `destination`: an OSError becomes OutputError (exit 2, one line), and on any failure the
    staging folder goes."""
    try:
        yield
    except BaseException as exc:
        if staged is not None:
            staged.discard()
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {destination}: {(exc.strerror or str(exc)).lower()}") from None
        raise


def _fsync(path: Path | str, at: int | None = None) -> None:
    """Write a staged file back to disk; `at`: the staging folder's descriptor, `path` then a name in it."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=at)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
