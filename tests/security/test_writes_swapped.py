"""A hostile user who can write in the output folder swaps a folder graphfix made or checked there (an output's
new folder, its staging folder, the destination's folder) for a link while graphfix writes: every file staged,
every folder made or removed for an output, and the old data a commit reads before removing it goes through the
descriptors of the folders graphfix made or checked (opened without following a link), never through a path again.
Each swap runs at a real step of graphfix's own (a weight read, an fsync, a folder told to the parent, a rename)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper
from writes_kit import healthy

from graphfix.core import forked
from graphfix.core.errors import OutputError
from graphfix.io import saving
from graphfix.io.staging import make_folders, remove_made
from graphfix.io.targets import write_atomic
from graphfix.io.weights import stub

KEYS = b"ssh-ed25519 AAAA... the user's own key\n"
RELU = '< ir_version: 8, opset_import: ["" : 17] > g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }'


def light_model() -> tuple[onnx.ModelProto, dict]:
    """y = x + w, `w` a stub standing for a 64x4 weight (what a repaired model's weights look like)."""
    w = numpy_helper.from_array(np.full((64, 4), 0.5, np.float32), "w")
    model = onnx.parser.parse_model('< ir_version: 8, opset_import: ["" : 17] > g (float[64, 4] x) => '
                                    "(float[64, 4] y) { y = Add(x, w) }")
    model.graph.initializer.append(stub(w))
    return model, {"w": w}


def swap_for_link(folder, to, keep=None) -> None:
    """What the hostile user does: the folder moved aside (to `keep`, else beside it), a link to `to` put there."""
    folder.rename(keep or folder.with_name(folder.name + ".moved"))
    folder.symlink_to(to, target_is_directory=True)


def staging_folder(out):
    return next(p for p in out.iterdir() if ".graphfix-" in p.name and not p.is_symlink())


class SwappingWeights(dict):
    """Weights whose first read (while the data file is written) swaps the staging folder for a link."""

    def __init__(self, weights, swap) -> None:
        super().__init__(weights)
        self.swap = swap

    def get(self, key, default=None):
        if self.swap:
            self.swap, swap = None, self.swap
            swap()
        return super().get(key, default)


def test_a_staging_folder_swapped_while_its_data_is_written_is_not_followed(sandbox, monkeypatch):
    """The model file was opened by the staging folder's path after its data was written: a link put in place
    of that folder had the user's `outside/m.onnx` truncated and overwritten."""
    out = sandbox.root / "out"
    out.mkdir()
    (sandbox.outside / "m.onnx").write_bytes(KEYS)
    model, weights = light_model()
    monkeypatch.setattr(saving, "PROTOBUF_LIMIT", (64 << 20) + 16)  # the weight goes to a data file

    moved = []

    def swap() -> None:
        moved.append(staging_folder(out).with_suffix(".moved"))
        swap_for_link(moved[0].with_suffix(".tmp"), sandbox.outside, keep=moved[0])
        sandbox.touched()  # the hostile user's own doing

    staged = saving.stage_model(model, out / "m.onnx", weights=SwappingWeights(weights, swap), within=out)
    assert sorted(p.name for p in moved[0].iterdir()) == [".graphfix-staging", "m.onnx", "m.onnx.data"]
    staged.discard()  # the link is not the folder it made: kept, as is the folder moved aside
    assert sandbox.touched() == [] and sorted(p.name for p in sandbox.outside.iterdir()) == ["m.onnx", "secret.bin"]
    assert (sandbox.outside / "m.onnx").read_bytes() == KEYS


def test_a_staging_folder_swapped_between_the_weights_and_the_graph_is_not_followed(sandbox):
    """`stage_weights` writes the weights while the graph is fixed (seconds), `finish_stage` appends the graph:
    it reopened the staged file by path, through a link put in place of the staging folder meanwhile."""
    out = sandbox.root / "out"
    out.mkdir()
    (sandbox.outside / "m.onnx").write_bytes(KEYS)
    model, weights = light_model()
    staged = saving.stage_weights(out / "m.onnx", model, weights, within=out)
    swap_for_link(staging_folder(out), sandbox.outside)
    sandbox.touched()
    with pytest.raises(OutputError, match=r"staging folder .* was replaced"):
        saving.finish_stage(staged, model, weights)
    assert sandbox.touched() == [] and sorted(p.name for p in sandbox.outside.iterdir()) == ["m.onnx", "secret.bin"]
    assert (sandbox.outside / "m.onnx").read_bytes() == KEYS


def test_a_report_staging_folder_swapped_before_its_rename_is_not_followed(sandbox, monkeypatch):
    """The report was renamed from its staging folder by path: a link put in place of that folder after the
    report was written (at its fsync) had the user's `outside/report` moved over the destination."""
    out = sandbox.root / "out"
    out.mkdir()
    (sandbox.outside / "report").write_bytes(KEYS)
    synced = os.fsync

    def swapping_sync(fd: int) -> None:
        synced(fd)
        swap_for_link(staging_folder(out), sandbox.outside)
        sandbox.touched()
        monkeypatch.setattr(os, "fsync", synced)

    monkeypatch.setattr(os, "fsync", swapping_sync)
    write_atomic(out / "report.json", "{}\n")  # renamed from the staging folder it made, wherever that is now
    monkeypatch.undo()
    assert sandbox.touched() == [] and sorted(p.name for p in sandbox.outside.iterdir()) == ["report", "secret.bin"]
    assert (sandbox.outside / "report").read_bytes() == KEYS
    assert (out / "report.json").read_text() == "{}\n"


def test_a_folder_made_for_an_output_and_swapped_is_not_followed(sandbox, monkeypatch):
    """`--output-dir out`, the output in `out/new1/new2`: `new1` made, then swapped for a link (as graphfix tells
    its parent it made it) had `new2` made in `outside`, then removed from there."""
    out = sandbox.root / "out"
    out.mkdir()
    told = forked.made

    def swapping_made(what: str) -> None:
        told(what)
        if what.endswith(str(out / "new1")):
            swap_for_link(out / "new1", sandbox.outside)
            sandbox.touched()

    monkeypatch.setattr(forked, "made", swapping_made)
    model = onnx.parser.parse_model(RELU)
    with pytest.raises(OutputError, match="new1 is a symbolic link") as refused:
        saving.stage_model(model, out / "new1" / "new2" / "m.onnx", within=out)
    assert len(str(refused.value).splitlines()) == 1
    monkeypatch.undo()
    assert (out / "new1.moved" / "new2").is_dir()  # made in the folder made before it, wherever that is now
    assert sandbox.touched() == [] and sorted(p.name for p in sandbox.outside.iterdir()) == ["secret.bin"]


def test_folders_made_for_an_output_are_removed_only_where_they_were_made(sandbox):
    """`remove_made` removed each folder by its path: `new1` swapped for a link to `outside` had the user's
    empty `outside/new2` removed."""
    out = sandbox.root / "out"
    out.mkdir()
    (sandbox.outside / "new2").mkdir()
    made = make_folders(out / "new1" / "new2")
    swap_for_link(out / "new1", sandbox.outside)
    sandbox.touched()
    remove_made(made)
    assert (sandbox.outside / "new2").is_dir() and sandbox.touched() == []
    assert (out / "new1.moved" / "new2").is_dir()  # moved aside, no longer at its path: kept


@pytest.mark.parametrize("to", ["an empty folder", "outside"])
def test_the_replaced_models_data_is_judged_in_its_own_folder(sandbox, monkeypatch, to):
    """After the commit's rename, graphfix read the destination's folder by path to learn whether another model
    reads the replaced model's data: that folder swapped for a link (to an empty folder) had the data `other.onnx`
    reads removed; to `outside`, graphfix listed and read the user's files there. It deletes no replaced data now,
    and reads nothing there."""
    out = sandbox.root / "out"
    healthy(out / "x" / "other.onnx", "m.onnx.data")
    healthy(out / "x" / "m.onnx", "m.onnx.data")
    (out / "empty").mkdir()
    target = out / "empty" if to == "an empty folder" else sandbox.outside
    staged = saving.stage_model(onnx.parser.parse_model(RELU), out / "x" / "m.onnx", within=out)
    renamed = os.replace

    def swapping_replace(*args, **kwargs) -> None:
        renamed(*args, **kwargs)
        monkeypatch.setattr(os, "replace", renamed)
        swap_for_link(out / "x", target, keep=out / "moved")
        sandbox.touched()

    monkeypatch.setattr(os, "replace", swapping_replace)
    staged.commit()
    monkeypatch.undo()
    assert (out / "moved" / "m.onnx.data").is_file() and any("m.onnx.data" in why for why in staged.kept)
    assert sandbox.touched() == []
    shutil.rmtree(out)
