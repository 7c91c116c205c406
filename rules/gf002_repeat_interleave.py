"""GF002 repeat-interleave (placeholder until the rule lands)."""

from graphfix.rule import Rule


class RepeatInterleave(Rule):
    """Placeholder: detects nothing yet."""

    code = "GF002"
    name = "repeat-interleave"

    def detect(self, ctx):
        return iter(())
