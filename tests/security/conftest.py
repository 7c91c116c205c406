"""The `sandbox` fixture (tests/security/hostile.py)."""

from __future__ import annotations

import pytest
from hostile import Sandbox


@pytest.fixture

def sandbox(tmp_path):
    made = Sandbox(tmp_path / "sandbox")
    made.touched()  # creating the bait is not the command's doing
    yield made
    made.close()
