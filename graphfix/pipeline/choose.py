"""Candidates the proof chooses among.

Where several entries of a shape vector could stand for a baked size (nn.MultiheadAttention traced at a length
equal to its head size bakes `Concat([4], B*heads, [4])`), a rule reports a `Choice` instead of a fix. `repair`
then builds the repair once per combination of candidates (at most MAX_TRIALS), validates each against the
original, re-traced with the same choice, and applies one only when it alone passes and no other stands.
Reshapes with the same candidates (one line of model code, traced once per layer or per projection) take the same
one. A candidate is ruled out only by a refutation: outputs that differ from a reference, a declared output
broken, a failure where the original runs. One whose own fix is unsafe (several forms fit it) still stands, and
so does one that fails only where the original fails too: the
size may be outside the model (`x.reshape(B, int(T) // 4, 16)` takes only multiples of 4, and a probe at T = 5 or
11 fails in PyTorch too), so `2*T`, which runs everywhere, is not the only one left. Several standing are reported
as ambiguous, and nothing is applied by default: the proof cannot tell them apart, so neither can we.
`--unsafe-fixes` applies the first that passes (in the order the rule lists its candidates) and says which it chose
and why it may be wrong.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Protocol

from graphfix.core.rule import Choice, Safety
from graphfix.pipeline.engine import FixOutcome

MAX_TRIALS = 8


class Verdict(Protocol):
    passed: bool
    refuted: bool


def choose(outcome: FixOutcome, trial: Callable[[dict[str, int]], FixOutcome],
           judge: Callable[[FixOutcome, dict[str, int]], Verdict],
           unsafe: bool = False) -> tuple[FixOutcome, dict[str, int], str]:
    """(the outcome to go on with, the choices it was built with, a note). `trial` builds the repair for a
    combination (Choice key -> option), `judge` validates it (graphfix.validate.Validation: passed, refuted);
    `unsafe` (--unsafe-fixes) takes the first of several that pass."""
    choices = [f.choice for f in outcome.after.findings if f.choice is not None]
    if not choices:
        return outcome, {}, ""
    labels = {c.key: dict(zip(c.options, c.labels, strict=True)) for c in choices}
    groups: dict[tuple[str, ...], list[Choice]] = {}  # the same candidates: one line of code, traced per layer
    for c in choices:
        groups.setdefault(c.labels, []).append(c)
    per_group = [[{c.key: c.options[k] for c in group} for k in range(len(shared))] for shared, group in groups.items()]
    combos = [{key: option for part in combo for key, option in part.items()}
              for combo in itertools.islice(itertools.product(*per_group), MAX_TRIALS + 1)]
    if len(combos) > MAX_TRIALS:
        return outcome, {}, (f"{len(choices)} shape(s) with several candidate entries make more than {MAX_TRIALS} "
                             "combinations; none was tried")
    passed, standing = [], []  # standing: passed, or failed only where the original fails too
    unsafe_because = []  # why a combination's fix was not applied (an echo of the size it makes follow the input)
    unbuilt = []  # combinations whose fix is unsafe: nothing refutes them, so they stand (helper 144)
    for picked in combos:
        tried = trial(picked)
        if not tried.changed or any(f.choice is not None for f in tried.after.findings):
            reasons = [f.fix.reason for f in tried.after.findings
                       if f.fix is not None and f.fix.safety is Safety.UNSAFE and f.fix.reason]
            unsafe_because += reasons
            if reasons:
                unbuilt.append(picked)
            continue
        verdict = judge(tried, picked)
        if verdict.passed:
            passed.append((picked, tried))
        if verdict.passed or not verdict.refuted:
            standing.append(picked)

    def described(picked: dict[str, int]) -> str:
        return "; ".join(f"'{key}' {labels[key][option]}" for key, option in picked.items())

    if len(passed) == 1 and len(standing) == 1 and not unbuilt:
        picked, tried = passed[0]
        return tried, picked, (f"the proof chose among {len(combos)} candidate combination(s), the only one it "
                               f"accepts: {described(picked)}")
    if passed:
        unproven = [p for p in standing if all(p is not q for q, _ in passed)]
        ambiguous = (f"ambiguous: {len(passed)} of {len(combos)} candidate combinations pass the proof ("
                     + " | ".join(described(p) for p, _ in passed) + ")"
                     + (f", and {len(unproven)} more {'fails' if len(unproven) == 1 else 'fail'} only at sizes "
                        "where the original fails too, which the model may not take ("
                        + " | ".join(described(p) for p in unproven) + ")" if unproven else "")
                     + (f", and {len(unbuilt)} more the graph leaves but that {'is' if len(unbuilt) == 1 else 'are'}"
                        " not safe to build (" + " | ".join(described(p) for p in unbuilt) + f": {unsafe_because[0]})"
                        if unbuilt else ""))
        if not unsafe:
            return outcome, {}, ambiguous + "; none applied (--unsafe-fixes applies the first)"
        picked, tried = passed[0]
        return tried, picked, (f"{ambiguous}; --unsafe-fixes applied the first, {described(picked)}: it may be "
                               "wrong: the others pass the proof as well, and the graph does not say which the "
                               "model code meant")
    if unsafe_because and not standing:
        return outcome, {}, (f"none of {len(combos)} candidate combination(s) is safe to apply ({unsafe_because[0]})"
                             "; none applied")
    return outcome, {}, f"none of {len(combos)} candidate combination(s) passes the proof; none applied"
