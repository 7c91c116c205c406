"""Single-model commands' work in a forked child (`graphfix.core.forked`): a crash in onnxruntime is one line with
exit 2, and what the child left (scratch, staging beside the output) is removed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graphfix.core.forked import Crashed, run_forked
from graphfix.io import staging


def in_child(work: Callable[[], Any], model: Path | str, output: Path | str | None = None) -> Any:
    """`work()` run in a forked child; a SurgeryResult comes back without its model (the child wrote it)."""
    def slim() -> Any:
        result = work()
        return dataclasses.replace(result, model=None) if hasattr(result, "model") else result

    try:
        return run_forked(slim, str(model))
    except Crashed:
        staging.sweep()
        if output is not None:
            staging.sweep(Path(output).parent)
        raise
