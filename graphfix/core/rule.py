"""What a rule is: metadata, documentation, detection and fix side by side.

A rule is one class in one file of `rules/`:

    class UnusedThing(Rule):
        \"\"\"One-line summary.

        ## What it does
        ## Why it breaks deployment
        ## Example
        ## Fix safety
        \"\"\"

        code = "GF0NN"                # stable, never reused
        name = "unused-thing"         # kebab-case
        severity = Severity.WARNING

        def detect(self, ctx):
            for node in ctx.graph.nodes:
                if node.op != "Thing":
                    continue                              # guard clauses, one comment each
                if not ...:
                    yield self.reject("input is not constant", nodes=[node])
                    continue
                yield self.finding("...", nodes=[node], fix=Fix("...", apply=lambda g: ..., safety=Safety.SAFE))

Fixes mutate the onnx-graphsurgeon graph and nothing else; the engine runs clean-up, toposort and unique naming
afterwards, and detects again until nothing changes.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

DOC_SECTIONS = ("What it does", "Why it breaks deployment", "Example", "Fix safety")


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


class Safety(str, Enum):
    """Whether a fix may run by default (SAFE) or only with --unsafe-fixes (UNSAFE)."""

    SAFE = "safe"
    UNSAFE = "unsafe"


@dataclass
class Fix:
    """A change to the graph, decided per occurrence; `reason` says why it is (un)safe."""

    summary: str
    apply: Callable[[gs.Graph], None]
    safety: Safety = Safety.SAFE
    reason: str = ""
    # the input dims along which the fix changes what the original computes where it runs (positions baked at the
    # export length: GF014): the proof takes the original for no reference away from their export sizes
    moves: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Choice:
    """A fix that depends on which of several candidates is right (a constant that several entries of a shape
    vector could stand for). `repair` builds the repair for each (`RuleOptions.choices` maps `key` to one of
    `options`), keeps those the proof accepts, and applies one only when it alone passes."""

    key: str
    options: tuple[int, ...]
    labels: tuple[str, ...]


@dataclass
class RuleOptions:
    """User options rules may read. Unknown keys from plugins go in `extra`."""

    unsafe_fixes: bool = False
    expect_outputs: tuple[str, ...] = ()
    trace_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    several: bool = False  # one command, several models: a --trace-shape name one model lacks may be another's
    static: bool = False
    choices: Mapping[str, int] = field(default_factory=dict)  # Choice key -> the option to build (repair's trials)
    # what the graph before any fix said of its export sizes (graphfix.analysis.export_sizes.ExportFact), for
    # the later rounds of a repair, whose graph a fix may have cleared of that evidence
    exported: tuple = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Finding:
    """A problem at named nodes and tensors, its cause in one sentence, and what to change."""

    rule: str
    name: str
    severity: Severity
    message: str
    nodes: list[str] = field(default_factory=list)
    tensors: list[str] = field(default_factory=list)
    hint: str = ""
    fix: Fix | None = None
    shapes: dict[str, Any] = field(default_factory=dict)
    choice: Choice | None = None  # no fix yet: the proof chooses among candidates (see Choice)

    @property
    def fixable(self) -> bool:
        return self.fix is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "name": self.name,
            "severity": self.severity.value,
            "message": self.message,
            "nodes": list(self.nodes),
            "tensors": list(self.tensors),
            "shapes": {k: _jsonable_shape(v) for k, v in self.shapes.items()},
            "fixable": self.fixable,
            "fix": None if self.fix is None else {"summary": self.fix.summary, "safety": self.fix.safety.value,
                                                  "reason": self.fix.reason},
            "hint": self.hint,
            "candidates": list(self.choice.labels) if self.choice else [],  # the proof chooses (see Choice)
        }


@dataclass
class Rejection:
    """A candidate a rule looked at and let go, with the reason (answers "why doesn't it match?")."""

    rule: str
    reason: str
    nodes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "reason": self.reason, "nodes": list(self.nodes)}


@dataclass(frozen=True)
class KnownError:
    """An exporter or onnxruntime error message: what it means and what to change (`graphfix explain TEXT`)."""

    regex: str  # matched case-insensitively: see `pattern`
    title: str
    cause: str
    fix: str
    rule: str | None = None  # the graphfix rule that detects it in the exported graph (set from the owner)
    reports: str = ""  # public reports where it was seen

    @property
    def pattern(self) -> re.Pattern[str]:
        """Compiled when first matched (`re` keeps it), not at import: every command imports the rules, few match."""
        return re.compile(self.regex, re.I)

    def explain(self) -> str:
        lines = [self.title, "", f"Cause: {self.cause}", f"Fix: {self.fix}"]
        if self.rule:
            lines.append(f"Detected by: {self.rule} (graphfix explain {self.rule}); `graphfix repair` fixes what the "
                         "graph still carries the information for.")
        if self.reports:
            lines.append(f"Seen in: {self.reports}")
        return "\n".join(lines)


def known(pattern: str, title: str, cause: str, fix: str, reports: str = "") -> KnownError:
    return KnownError(pattern, title, cause, fix, None, reports)


@dataclass
class FailureSite:
    """A node onnxruntime failed in, as the probe saw it: what `Rule.claims_failure` decides on."""

    node: Any  # onnx.NodeProto
    message: str
    model: Any  # onnx.ModelProto the node belongs to

    def fed_by(self, ops: Iterable[str], depth: int = 4) -> bool:
        """True when one of `ops` produces an input of the node within `depth` nodes upstream."""
        wanted = set(ops)
        return any(n.op_type in wanted for n in self.upstream(depth))

    def upstream(self, depth: int = 4) -> Iterator[Any]:
        """The nodes within `depth` producers upstream of the failing node, nearest first."""
        producers = {out: n for n in self.model.graph.node for out in n.output}
        frontier = [producers[name] for name in self.node.input if name in producers]
        for _ in range(depth):
            yield from frontier
            frontier = [producers[name] for n in frontier for name in n.input if name in producers]


def _jsonable_shape(shape: Any) -> Any:
    if shape is None:
        return None
    return [d if isinstance(d, int | str) or d is None else str(d) for d in shape]


def _names(items: Iterable[Any] | None) -> list[str]:
    return [item if isinstance(item, str) else item.name for item in (items or ())]


class Rule:
    """Base class of every rule, built-in or plugin. Subclasses set the class attributes and `detect`."""

    code: ClassVar[str]
    name: ClassVar[str]
    severity: ClassVar[Severity] = Severity.ERROR
    aliases: ClassVar[tuple[str, ...]] = ()
    # True when detect() reads weight values or runs onnxruntime; such rules are skipped by --static.
    needs_weights: ClassVar[bool] = False
    # True when the rule can offer a Fix for (some of) its findings.
    fixable: ClassVar[bool] = False
    # True when only the onnxruntime probe reports this code (the rule documents it; detect() finds nothing).
    runtime_only: ClassVar[bool] = False
    # True when the rule's findings are values captured while tracing: graphfix.export links TracerWarnings to them.
    traced_values: ClassVar[bool] = False

    # --- what the onnxruntime probe maps to this rule ---------------------------------------------------------
    # A failure belongs to the first rule (by `runtime_order`) whose `claims_failure` says so: by default, when the
    # failing node's op is in `runtime_ops` or onnxruntime's message matches one of `runtime_messages`.
    # Failures no rule claims are GF000's. `runtime_hint` is what to change, shown with the runtime finding.
    runtime_ops: ClassVar[frozenset[str]] = frozenset()
    runtime_messages: ClassVar[tuple[str, ...]] = ()
    runtime_order: ClassVar[int] = 100
    runtime_hint: ClassVar[str] = ""
    # An input the caller feeds (`--input`) that the graph does not declare belongs to the rule that sets this
    # (the exporter pruned it: GF001); `suspect_outputs` names outputs the probe's clean runs show unusable.
    claims_undeclared_inputs: ClassVar[bool] = False
    # Exporter and onnxruntime messages this rule explains (`graphfix explain TEXT`).
    knowledge: ClassVar[tuple[KnownError, ...]] = ()

    # --- what the proof's derived check re-traces (graphfix.validate.retrace) ---------------------------------
    # A rule whose fix rebuilds what the export baked declares where its analysis finds it, so that the original
    # can be re-traced at another size: `baked_entries` yields (node, input slot, element, export value, sympy
    # expression) for an entry of a constant vector, with (whole vector, least valid value) appended where the
    # vector is computed from constants; `baked_operands` yields the structured constants cut at export
    # (graphfix.analysis.structured.Baked). None of it is evidence: the re-trace only checks the rewrite.

    @classmethod
    def baked_entries(cls, sizes: Any, choices: dict[str, int]) -> Iterable[tuple]:
        """Baked entries of the size analysis `sizes`; `choices`: Reshape name -> the entry the repair rebuilt."""
        return ()

    @classmethod
    def baked_operands(cls, ctx) -> Iterable[Any]:
        """Structured constants of the graph in `ctx` (a RuleContext) cut at an export-time size."""
        return ()

    def detect(self, ctx) -> Iterable[Finding | Rejection]:
        """Findings and rejections for one graph state. `ctx` is what the rule sees, a RuleContext
        (`graphfix.analysis.context`): the graph, its shapes, constant values and the RuleOptions."""
        if self.runtime_only:
            return ()
        raise NotImplementedError

    @classmethod
    def claims_failure(cls, site: FailureSite) -> bool:
        """Whether an onnxruntime failure at `site` is this rule's (see `runtime_ops`, `runtime_messages`)."""
        return site.node.op_type in cls.runtime_ops or any(
            re.search(pattern, site.message) for pattern in cls.runtime_messages)

    @classmethod
    def suspect_outputs(cls, runs: Sequence[Mapping[str, Any]]) -> Iterable[tuple[str, str]]:
        """(output, why) for each output that the probe's clean runs (one mapping of output name -> numpy value per
        probe size) show to be unusable; the probe reports each as this rule's finding, at its `severity`."""
        return ()

    @classmethod
    def docs(cls) -> str:
        return inspect.cleandoc(cls.__doc__ or "")

    @classmethod
    def summary(cls) -> str:
        return cls.docs().splitlines()[0] if cls.docs() else ""

    def finding(
        self,
        message: str,
        *,
        nodes: Sequence[Any] = (),
        tensors: Sequence[Any] = (),
        hint: str = "",
        fix: Fix | None = None,
        severity: Severity | None = None,
        shapes: dict[str, Any] | None = None,
        choice: Choice | None = None,
    ) -> Finding:
        return Finding(
            rule=self.code,
            name=self.name,
            severity=severity or self.severity,
            message=message,
            nodes=_names(nodes),
            tensors=_names(tensors),
            hint=hint,
            fix=fix,
            shapes=shapes or {},
            choice=choice,
        )

    def reject(self, reason: str, *, nodes: Sequence[Any] = ()) -> Rejection:
        return Rejection(self.code, reason, _names(nodes))
