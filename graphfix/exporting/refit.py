"""Constants that move between traces, rebuilt from the input's shape: what the graph alone cannot settle (#22).

A TorchScript export bakes every Python number the module computed from a size: MobileViT's patch counts
`math.ceil(H / p)`, `B * C * n_h`. From the graph these are not determined: a block of the opposite design (a fixed
grid of patches whose size follows the input) leaves the same graph, constants and all
(tests/frontends/test_patch_grid_ambiguity.py), so `graphfix repair` refuses both. The module settles it: traced
again at other sizes, the constants that follow a size move and the model's own stay. This module makes those
traces, one dim at a time, and fits each moving integer (graphfix.exporting.fit); where several fits remain it
traces again at a size where they disagree. The fitted constants are then computed from `Shape` of the input
that carries the dim, and `graphfix.export` proves the result against the module at sizes no trace used.

Only what every trace agrees on is rebuilt: the traces must keep the graph's structure (the same ops, in order;
a trace that takes another branch is outside the graph's domain and says nothing), and a moving constant is an
integer vector of one length in all. Fits still several after MAX_OUTSIDE traces that all left the graph's
domain differ only where the graph does not hold: the simplest is kept, and the note says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphfix.exporting.fit import REACH, Fit, Observation, Sizes, fits, splitting_size

MAX_TRACES = 24  # traces beyond the first, in all: each is one export of the module
MAX_SECONDS = 120.0  # and the time they may take together: none is started after it
MAX_OUTSIDE = 3  # traces outside the graph's domain, for one dim, after which its fits count as one
MAX_ELEMENTS = 64  # integer constants longer than this are tables, not sizes
FACTORS = (4, 5)  # each dim traced at these multiples of its export size (2x and 3x are the proof's sizes)

Site = tuple[int, int]  # (node index, input index) of an integer constant read by a node of the main graph
Trace = Callable[[Sizes], "onnx.ModelProto | None"]  # the module exported at these sizes, or None if it failed


@dataclass
class Refitted:
    """The export with its moving constants computed from the input's shape (`model`), what was rebuilt, and
    why anything was not (`notes`)."""

    model: onnx.ModelProto | None
    rebuilt: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def refit(model: onnx.ModelProto, dims: dict[str, tuple[str, int, int]], trace: Trace,
          avoid: Sequence[Sizes] = ()) -> Refitted:
    """Trace the module at other sizes, fit every integer constant that moves, and rebuild it. No trace is made
    at the sizes in `avoid`: the proof's, where the refitted model must earn its match on its own."""
    base = {name: size for name, (_, _, size) in dims.items()}
    structure, constants = _structure(model), _constants(model)
    if not base:
        return Refitted(None, notes=["the export declares no dynamic dim to trace at other sizes"])
    traces = _Traces(trace, structure, constants, base, avoid)
    for dim, export in base.items():
        for factor in FACTORS:
            traces.at({**base, dim: export * factor})
    moving = {site for site, values in traces.values.items() if len({v for _, v in values}) > 1}
    if not moving:
        return Refitted(None, notes=["no integer constant moves between the traces at other sizes"])
    chosen, notes = _settle(traces, sorted(moving), base)
    if chosen is None:
        return Refitted(None, notes=notes)
    rebuilt = [f"{traces.reader(site)}: [{', '.join(map(str, fitted))}]" for site, fitted in sorted(chosen.items())]
    return Refitted(_rebuild(model, chosen, dims), rebuilt, notes)


class _Traces:
    """The traces made so far: each site's value in each trace that kept the graph's structure."""

    def __init__(self, trace: Trace, structure, constants: dict[Site, np.ndarray], base: Sizes,
                 avoid: Sequence[Sizes]):
        self.trace, self.structure, self.base = trace, structure, base
        self.avoid = [dict(sizes) for sizes in avoid]
        self.values: dict[Site, list[tuple[Sizes, tuple[int, ...]]]] = {
            site: [(base, tuple(array.ravel().tolist()))] for site, array in constants.items()}
        self.shapes = {site: array.shape for site, array in constants.items()}
        self.outside: dict[str, list[int]] = {dim: [] for dim in base}
        self.made, self.deadline = 0, time.monotonic() + MAX_SECONDS

    def spent(self) -> bool:
        return self.made >= MAX_TRACES or time.monotonic() > self.deadline

    def at(self, sizes: Sizes) -> bool:
        """Trace at `sizes`; whether the trace kept the graph (its values are then recorded)."""
        if self.spent() or dict(sizes) in self.avoid:
            return False
        self.made += 1
        traced = self.trace(sizes)
        if traced is None or _structure(traced) != self.structure:
            for dim in self.base:
                if sizes[dim] != self.base[dim]:
                    self.outside[dim].append(sizes[dim])
            return False
        found = _constants(traced)
        for site in self.values:
            if site not in found or found[site].shape != self.shapes[site]:
                self.shapes[site] = None  # a constant whose length moves is not a size vector
                continue
            self.values[site].append((sizes, tuple(found[site].ravel().tolist())))
        return True

    def reader(self, site: Site) -> str:
        op, name = self.structure[site[0]]
        return f"{op} node '{name or site[0]}' (input {site[1]})"

    def sizes_of(self, dim: str) -> set[int]:
        """The sizes of `dim` traced already, or not to trace (the others at export)."""
        known = {sizes[dim] for values in self.values.values() for sizes, _ in values}
        avoided = {sizes[dim] for sizes in self.avoid if sizes == {**self.base, dim: sizes[dim]}}
        return known | avoided | set(self.outside[dim])

    def observations(self, site: Site, element: int) -> list[Observation]:
        return [(sizes, values[element]) for sizes, values in self.values[site]]


def _settle(traces: _Traces, moving: list[Site], base: Sizes) -> tuple[dict[Site, list[Fit]] | None, list[str]]:
    """One fit per element of each moving site, tracing again where several remain; None and why, when a site
    cannot be fitted."""
    notes: dict[str, str] = {}  # dim -> how its ties were settled
    decided: dict[tuple[Site, int], Fit] = {}
    while True:
        chosen: dict[Site, list[Fit]] = {}
        tie: tuple[tuple[Site, int], list[Fit]] | None = None
        for site in moving:
            if traces.shapes[site] is None:
                return None, [f"the constant read by {traces.reader(site)} changes its length between traces: a "
                              "table, not a size"]
            row = []
            for element, value in enumerate(traces.values[site][0][1]):
                observations = traces.observations(site, element)
                if len({v for _, v in observations}) == 1:
                    row.append(Fit((), 0, value))  # the model's own number
                    continue
                found = [decided[site, element]] if (site, element) in decided else fits(observations, base)
                if not found:
                    return None, [f"the constant read by {traces.reader(site)}, element {element}, moves as no "
                                  f"size expression does: {_shown(observations)}"]
                if len(found) > 1 and tie is None:
                    tie = (site, element), found
                row.append(found[0])
            chosen[site] = row
        if tie is None:
            return chosen, list(notes.values())
        key, candidates = tie
        dim = _dim_to_split(candidates, base)
        tried = [s for s in traces.outside[dim] if _disagree(candidates, {**base, dim: s})]
        size = splitting_size(candidates, base, traces.sizes_of(dim), dim)
        if size is None or len(tried) >= MAX_OUTSIDE:
            # every size where they disagree that was traced took another path: there the graph is not the module
            decided[key] = candidates[0]
            notes.setdefault(dim, f"the fits along {dim} differ only at sizes where the module traces another graph "
                                  f"({dim} = {', '.join(map(str, tried)) or 'none within reach'}): kept the simplest, "
                                  f"as {candidates[0]} over {candidates[1]}")
            continue
        if traces.spent():
            return None, [f"{len(candidates)} size expressions still fit after {traces.made} traces (at most "
                          f"{MAX_TRACES}, in {MAX_SECONDS:.0f} s): {', '.join(map(str, candidates[:4]))}"]
        traces.at({**base, dim: size})


def _disagree(candidates: list[Fit], sizes: Sizes) -> bool:
    return len({c.at(sizes) for c in candidates}) > 1


def _dim_to_split(candidates: list[Fit], base: Sizes) -> str:
    """The first dim along which the candidates disagree (fits.fits keeps only candidates that do)."""
    return next((dim for dim in base if any(_disagree(candidates, {**base, dim: size})
                                            for size in range(1, REACH * base[dim] + 1))), next(iter(base)))


def _shown(observations: list[Observation]) -> str:
    return "; ".join(f"{dict(sizes)} -> {value}" for sizes, value in observations[:4])


def _structure(model: onnx.ModelProto) -> list[tuple[str, str]]:
    return [(node.op_type, node.name) for node in model.graph.node]


def _constants(model: onnx.ModelProto) -> dict[Site, np.ndarray]:
    """Each integer constant a node of the main graph reads (an initializer or a Constant node's output), by
    (node index, input index): the same position in two traces of one structure."""
    values: dict[str, np.ndarray] = {}
    for tensor in model.graph.initializer:
        if tensor.data_type in _INTEGER and _elements(tensor.dims) <= MAX_ELEMENTS:
            values[tensor.name] = numpy_helper.to_array(tensor)
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.output) == 1:
            array = _constant_value(node)
            if array is not None:
                values[node.output[0]] = array
    return {(i, j): values[name] for i, node in enumerate(model.graph.node) for j, name in enumerate(node.input)
            if name in values}


_INTEGER = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}


def _elements(dims) -> int:
    count = 1
    for d in dims:
        count *= d
    return count


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attribute in node.attribute:
        if attribute.name == "value" and attribute.t.data_type in _INTEGER and not attribute.t.data_location \
                and _elements(attribute.t.dims) <= MAX_ELEMENTS:
            return numpy_helper.to_array(attribute.t)
        if attribute.name == "value_int":
            return np.array(attribute.i, dtype=np.int64)
        if attribute.name == "value_ints" and len(attribute.ints) <= MAX_ELEMENTS:
            return np.array(list(attribute.ints), dtype=np.int64)
    return None


def _rebuild(model: onnx.ModelProto, chosen: dict[Site, list[Fit]], dims: dict[str, tuple[str, int, int]]
             ) -> onnx.ModelProto:
    """`model` (changed in place) with each chosen site's input computed from Shape of the inputs instead."""
    build, constants, replaced = _Builder(dims), _constants(model), set()
    for (i, j), fitted in chosen.items():
        node = model.graph.node[i]
        replaced.add(node.input[j])
        node.input[j] = build.vector(fitted, constants[i, j].shape, constants[i, j].dtype, f"graphfix_refit_{i}_{j}")
    read = _read_names(model.graph) | {o.name for o in model.graph.output}
    gone = replaced - read  # the replaced constants no node reads any more
    nodes = build.nodes + [n for n in model.graph.node if not (n.op_type == "Constant" and n.output[0] in gone)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [t for t in model.graph.initializer if t.name not in gone]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def _read_names(graph: onnx.GraphProto) -> set[str]:
    """Every name a node of `graph` or of its subgraphs reads."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                names |= _read_names(sub)
    return names


class _Builder:
    """The nodes that compute fits from the inputs' shapes, each dim's size read once."""

    def __init__(self, dims: dict[str, tuple[str, int, int]]):
        self.dims, self.nodes, self.sizes = dims, [], {}

    def vector(self, fitted: list[Fit], shape: tuple[int, ...], dtype, name: str) -> str:
        parts = [self.fit(f, f"{name}_{k}") for k, f in enumerate(fitted)]
        joined = self.node("Concat", parts, f"{name}_joined", axis=0) if len(parts) > 1 else parts[0]
        shaped = self.node("Reshape", [joined, self.constant(list(shape), f"{name}_shape")], f"{name}_shaped")
        if dtype == np.int64:
            return shaped
        return self.node("Cast", [shaped], name, to=onnx.TensorProto.INT32)

    def fit(self, fit: Fit, name: str) -> str:
        """fit as a one-element int64 vector."""
        if not fit.terms:
            return self.constant([fit.offset], name)
        value = None
        for n, term in enumerate(fit.terms):
            part = self.size(term.dim)
            if term.ceil:
                part = self.node("Add", [part, self.constant([term.k - 1], f"{name}_t{n}_up")], f"{name}_t{n}_a")
            if term.k != 1:
                part = self.node("Div", [part, self.constant([term.k], f"{name}_t{n}_k")], f"{name}_t{n}_d")
            value = part if value is None else self.node("Mul", [value, part], f"{name}_t{n}_m")
        if fit.scale != 1:
            value = self.node("Mul", [value, self.constant([fit.scale], f"{name}_scale")], f"{name}_s")
        if fit.offset:
            value = self.node("Add", [value, self.constant([fit.offset], f"{name}_offset")], f"{name}_o")
        return value

    def size(self, dim: str) -> str:
        """A dim's size, `Gather(Shape(input), [axis])`: a one-element int64 vector."""
        if dim not in self.sizes:
            graph_input, axis, _ = self.dims[dim]
            name = f"graphfix_refit_size_{len(self.sizes)}"
            shape = self.node("Shape", [graph_input], f"{name}_shape")
            self.sizes[dim] = self.node("Gather", [shape, self.constant([axis], f"{name}_axis")], name, axis=0)
        return self.sizes[dim]

    def constant(self, values: list[int], name: str) -> str:
        tensor = numpy_helper.from_array(np.array(values, dtype=np.int64), name)
        self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attributes))
        return name
