"""Heavy modules imported on first use: `diagnose --static` on a graph that no rule needs them for pays nothing.

    from graphfix.core.lazy import sympy    # instead of `import sympy`

sympy takes 0.7 s to import on a 2-core machine, more than the rest of graphfix's start-up (issue 23); only the
size analysis uses it, and only when a rule has a candidate to solve. The stand-in imports the real module on its
first attribute read, then keeps each attribute it handed out, so that hot loops read plain attributes. Nothing
enters `sys.modules` before that first read. graphfix's own modules that only a candidate of a rule reads
(`hypotheses`, `bands`) stand in the same way: building their dataclasses costs every graph a few ms.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class LazyModule:
    """Stands for the module `name` until an attribute is read."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        if attr.startswith("__"):  # copy, pickle and introspection probe dunders: no reason to import
            raise AttributeError(attr)
        value = getattr(self.module(), attr)
        setattr(self, attr, value)  # later reads find it directly, not through __getattr__
        return value

    def module(self) -> ModuleType:
        return importlib.import_module(self._name)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


sympy = LazyModule("sympy")
# the size hypotheses: only a rule with a candidate to judge reads them, and their frozen dataclasses cost 3.5 ms
# to build at import, on every graph (#23)
hypotheses = LazyModule("graphfix.analysis.hypotheses")
# the band structures of a baked mask: GF006 reads them only for a constant that varies with a size
bands = LazyModule("graphfix.analysis.bands")
