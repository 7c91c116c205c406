"""The README's list of refused inputs and the fuzz test's tables say the same: every kind of input the README says
is refused is made by a fuzz table (and so run through all six commands), and every fuzz family is in the list."""

from __future__ import annotations

import re
from pathlib import Path

from fuzz_attacks import CONTROLS, LOCATIONS, PLACES
from fuzz_mutants import BYTE_MUTATORS, FILE_CASES, PROTO_MUTATORS

README = Path(__file__).resolve().parents[2] / "README.md"

# README phrase -> the fuzz table entries that make such inputs (kind:name; kinds: file, bytes, mutator, place,
# location)
COVERED = {
    "missing paths": ["file:missing-path"],
    "folders without models": ["file:folder-without-models"],
    "empty files": ["file:empty-file"],
    "text files": ["file:text-file"],
    "Git LFS pointers": ["file:lfs-pointer"],
    "damaged protobufs (flipped, cut, inserted or overwritten bytes)": [
        "bytes:_bit_flips", "bytes:_truncate", "bytes:_insert", "bytes:_set_ff"],
    "unsupported IR versions and opsets": ["mutator:graph_edit"],
    "data types that are no ONNX type": ["mutator:bad_dtype"],
    "values that do not match the dims": ["mutator:raw_size", "mutator:typed_fields"],
    "negative or absurd dims": ["mutator:dims", "mutator:input_type"],
    "string tensors in `raw_data` or not UTF-8": ["mutator:string_tensor"],
    "names that are not UTF-8": ["bytes:_non_utf8"],
    "attributes without a type, of the wrong type or an empty list": ["mutator:attr_type"],
    "a cycle": ["mutator:cycle"],
    "a tensor nothing produces": ["mutator:graph_edit"],
    "a tensor produced twice": ["mutator:graph_edit"],
    "operators or domains onnx does not know": ["mutator:graph_edit"],
    "recursive functions": ["mutator:function"],
    "calls of functions the model does not define": ["mutator:function"],
    "element types onnxruntime does not load": ["mutator:input_type", "mutator:cycle"],
    "one type parameter bound to two types, even in an unsorted graph": ["mutator:cycle"],
    "a sequence, map or string where numbers are needed": ["mutator:input_type"],
    "graph inputs without a type or with an unknown element type": ["mutator:input_type"],
    "sparse tensors (not supported)": ["mutator:sparse"],
    "external data, wherever a tensor can keep it": ["mutator:external_fields"],
    "initializers": ["place:initializer"],
    "both halves of sparse initializers": ["place:sparse-values", "place:sparse-indices"],
    "tensors in node attributes": ["place:constant"],
    "in subgraphs": ["place:subgraph"],
    "in model-local functions": ["place:function"],
    "absolute": ["location:absolute"],
    "a drive": ["location:drive"],
    "a UNC path": ["location:unc"],
    "a URL": ["location:url"],
    "`~`": ["location:home"],
    "`..` (with slashes or backslashes)": ["location:dotdot", "location:backslash"],
    "empty or absent": ["location:empty", "location:no-location"],
    "hold a NUL byte": ["location:nul"],
    "a name over 255 bytes": ["location:too-long"],
    "path too long for the file system": ["location:too-long-path"],
    "symbolic or hard links out of the folder": ["location:symlink", "location:symlink-dir", "location:hardlink"],
    "FIFOs": ["location:fifo"],
    "devices": ["location:dev-zero"],
    "folders": ["location:directory"],
    "missing or truncated files": ["location:missing", "location:past-end"],
    "unknown or repeated fields": ["location:unknown-key", "location:repeated-key"],
    "an offset or length that is not a non-negative integer": [
        "location:negative-offset", "location:negative-length", "location:text-offset", "location:float-offset"],
    "data past the end of the file": ["location:past-end", "location:huge-offset"],
    "a length other than the tensor's size": ["location:short-length", "location:long-length"],
    "Locations resolve against the model's folder, never the working directory": ["location:relative-to-cwd"],
    "so is a tensor that names graphfix's own placeholder (`__graphfix_weights_not_loaded__`) as its location": [
        "location:placeholder"],
}
# README phrases no fuzz table makes, and the test that holds graphfix to them instead
ELSEWHERE = {
    "an in-memory model with external data and no folder is refused": "tests/io/test_load_checks.py",
}
# the list's wording around its items
FRAME = [
    "Bad inputs are refused with exit 2 and one line naming the file, tensor, node or field, before any rule runs",
    "files", "malformed models (onnx's checker, plus graphfix's own checks where the checker lets them through)",
    "(`tensor 'w': raw_data has 12 bytes, dims [4, 4] of float need 64`)", "locations that are",
    "(CVE-2022-25882, CVE-2024-27318, CVE-2025-51480, CVE-2026-27489)",
    "Every command checks this, `--static` included, with `stat` only", "and", "or", "a",
]


def _refused_list() -> str:
    text = README.read_text()
    start = text.index("- Bad inputs are refused")
    end = text.index("\n- ", start)
    return " ".join(text[start:end].split())


def _fuzz_entries() -> set[str]:
    entries = {f"file:{name}" for name in FILE_CASES}
    entries |= {f"bytes:{f.__name__}" for f in BYTE_MUTATORS} | {f"mutator:{f.__name__}" for f in PROTO_MUTATORS}
    entries |= {f"place:{name}" for name in PLACES} | {f"location:{name}" for name in LOCATIONS}
    return entries


def test_every_refusal_the_readme_lists_is_made_by_the_fuzz_tables():
    listed = _refused_list()
    missing = [phrase for phrase in [*COVERED, *ELSEWHERE] if phrase not in listed]
    assert not missing, f"phrases no longer in the README's list: {missing}"
    unknown = sorted({entry for entries in COVERED.values() for entry in entries} - _fuzz_entries())
    assert not unknown, f"fuzz entries that no table has: {unknown}"
    # what is left of the list once every covered phrase and its wording are taken out: an item nothing covers
    rest = listed
    for phrase in sorted([*COVERED, *ELSEWHERE, *FRAME], key=len, reverse=True):
        rest = re.sub(rf"(?<![\w`]){re.escape(phrase)}(?![\w`])", " ", rest)
    leftover = re.sub(r"[\s,;:.()-]+", " ", rest).strip()
    assert not leftover, f"README items no fuzz table makes: {leftover!r}"


def test_every_fuzz_family_is_in_the_readme_list():
    claimed = {entry for entries in COVERED.values() for entry in entries}
    assert not _fuzz_entries() - claimed, f"fuzz families the README does not list: {_fuzz_entries() - claimed}"


def test_the_readme_counts_the_attacks_the_fuzz_test_runs():
    attacks = len(PLACES) * (len(LOCATIONS) + len(CONTROLS))
    text = " ".join(README.read_text().split())
    assert (f"{attacks} external-data attacks ({len(LOCATIONS)} locations and fields \u00d7 {len(PLACES)} places, plus "
            f"{len(CONTROLS)} valid controls each)") in text
