"""GF004 trace-baked-shape (placeholder until the rule lands)."""

from graphfix.rule import Rule


class TraceBakedShape(Rule):
    """Placeholder: detects nothing yet."""

    code = "GF004"
    name = "trace-baked-shape"

    def detect(self, ctx):
        return iter(())
