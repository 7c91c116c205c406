"""Sizes a part reads from a graph input it does not take, read from a boundary input that declares them too.

The dynamo exporter gives inputs one symbol for a dim they share (`features [batch, frames, 16]`, `tokens [batch,
tokens]`) and reads it from whichever input it meets first: an encoder-decoder's encoder then takes its batch size
from `Shape(tokens)`, and cutting the encoder at `--inputs features` needed the decoder's tokens (helper 72). Where
the part reads such an input only through Shape ops, and every dim they read is a symbol that a boundary input
declares at consecutive axes in the same order, the Shape reads that input instead, and the part does not take the
other. Only in a dynamo export, where one symbol means dims the trace holds equal (`_by_dynamo`); the part is
checked against the whole at every probe size as any part is, and once more with each such dim one longer
(`untied`: where the whole runs there, the part must agree).

    Shape(tokens, start=0, end=1)  ->  Shape(features, start=0, end=1)      (both declare `batch` there)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper

from graphfix.surgery import output_problems
from graphfix.validate.inputs import graph_inputs
from graphfix.validate.runner import ModelRunner


class Borrowed(NamedTuple):
    """A Shape (named by its output) of `source`'s axes `read` (start, end), to read axes `start:end` of
    `boundary` instead."""

    source: str
    boundary: str
    start: int
    end: int
    read: tuple[int, int] = (0, 0)


def borrowed_sizes(model: onnx.ModelProto, inputs: list[str], reached: set[str]) -> dict[str, Borrowed] | None:
    """For the graph inputs the part reaches (`reached`: the names its outputs read) but does not take, each Shape
    of them to rewrite, by its output's name; None where one is read otherwise (by data), reads a dim that no
    boundary input declares under the same symbol, in the same order, or where the model is no dynamo export."""
    if not _by_dynamo(model):
        return None
    declared = {vi.name: _dims(vi) for vi in graph_inputs(model)}
    sources = {name for name in declared if name in reached and name not in inputs}
    boundaries = [name for name in inputs if declared.get(name)]
    found: dict[str, Borrowed] = {}
    if sources & _read_in_subgraphs(model.graph):  # a branch reads it: no Shape of the main graph stands for that
        return None
    for node in model.graph.node:
        read = [name for name in node.input if name in sources]
        if not read or not any(out in reached for out in node.output):
            continue
        if node.op_type != "Shape" or not declared[read[0]]:
            return None
        dims = declared[read[0]]
        attrs = {a.name: a.i for a in node.attribute}
        start, end = (max(0, min(len(dims), v + len(dims) if v < 0 else v))
                      for v in (attrs.get("start", 0), attrs.get("end", len(dims))))
        wanted = dims[start:end]
        if not wanted or not all(isinstance(d, str) for d in wanted):
            return None
        where = next(((b, j) for b in boundaries for j in range(len(declared[b]) - len(wanted) + 1)
                      if declared[b][j:j + len(wanted)] == wanted), None)
        if where is None:
            return None
        found[node.output[0]] = Borrowed(read[0], where[0], where[1], where[1] + len(wanted), (start, end))
    return found


def borrow(part: onnx.ModelProto, borrowed: dict[str, Borrowed]) -> None:
    """Rewrite the part's Shapes as `borrowed` says, and drop the inputs they read from its interface."""
    for node in part.graph.node:
        if node.op_type == "Shape" and node.output[0] in borrowed:
            how = borrowed[node.output[0]]
            node.input[0] = how.boundary
            del node.attribute[:]
            node.attribute.extend([helper.make_attribute("start", how.start), helper.make_attribute("end", how.end)])
    sources = {how.source for how in borrowed.values()}
    kept = [vi for vi in part.graph.input if vi.name not in sources]
    del part.graph.input[:]
    part.graph.input.extend(kept)


def described(borrowed: dict[str, Borrowed]) -> str:
    """`tokens' sizes read from features`, once per pair."""
    pairs = sorted({(how.source, how.boundary) for how in borrowed.values()})
    return "; ".join(f"the sizes of {source} read from {boundary} (both declare them)" for source, boundary in pairs)


def untied(whole: ModelRunner, part: ModelRunner, feeds: dict[str, np.ndarray], borrowed: dict[str, Borrowed],
           inputs: list[str], outputs: list[str], rename: dict[str, str], options) -> list[str]:
    """Why the part may not read a source's sizes from its boundary: the whole (boundaries exposed) runs with one
    of the source's dims one longer than the boundary's, and the part, fed the whole's boundary values, differs
    there (helper 75: two inputs a TorchScript export named alike, `seq`, that the model does not tie). Nothing
    where the whole fails so at each (the model needs them equal) or the part agrees."""
    for source, axis in sorted({(how.source, axis) for how in borrowed.values() for axis in range(*how.read)}):
        array = feeds[source]  # one longer along that axis, its values repeated (token ids stay ids)
        longer = np.take(array, np.arange(array.shape[axis] + 1), axis=axis, mode="wrap")
        reference = whole.run({**feeds, source: longer})
        if not reference.ok:
            continue
        values = {**feeds, **reference.outputs}
        got = part.run({rename.get(name, name): values[name] for name in inputs}, strict_feeds=True)
        problems = [got.error] if not got.ok else output_problems(
            {rename.get(name, name): values[name] for name in outputs}, got.outputs, options.rtol, options.atol)
        if problems:
            return [f"{described(borrowed)}, but the whole runs with {source}'s dim {axis} one longer and the part "
                    f"differs there ({problems[0]}): the model does not tie them; give {source} in --inputs"]
    return []


def _by_dynamo(model: onnx.ModelProto) -> bool:
    """Whether the dynamo exporter wrote the model (it names each node's module path in a `namespace` entry of its
    metadata): torch.export gives two dims one symbol only where its trace needs them equal or the user declared
    them one `Dim`, and the graph is traced under that equality. The TorchScript exporter's `dynamic_axes` names
    are labels nothing checked: two untied dims named `seq` alike (helpers 75 and 76, parts wrong by up to 7.4 with
    exit 0, some of them past what one run with the dim one longer shows)."""
    return any(entry.key == "namespace" for node in model.graph.node[:64] for entry in node.metadata_props)


def _read_in_subgraphs(graph: onnx.GraphProto) -> set[str]:
    """Every name a node of a subgraph of `graph` (at any depth) reads."""
    read: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for inner in (*([attr.g] if attr.type == onnx.AttributeProto.GRAPH else []), *attr.graphs):
                read.update(name for n in inner.node for name in n.input)
                read |= _read_in_subgraphs(inner)
    return read


def _dims(vi: onnx.ValueInfoProto) -> list[str | int | None]:
    """The declared dims: a symbol's name, a number, or None for an unnamed dynamic dim; [] without a shape."""
    tensor = vi.type.tensor_type
    if not tensor.HasField("shape"):
        return []
    return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None)
            for d in tensor.shape.dim]
