"""GF003 broadcast-mismatch (placeholder until the rule lands)."""

from graphfix.rule import Rule


class BroadcastMismatch(Rule):
    """Placeholder: detects nothing yet."""

    code = "GF003"
    name = "broadcast-mismatch"

    def detect(self, ctx):
        return iter(())
