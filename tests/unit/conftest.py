"""The fast lane (`make test-unit`): tests of pure logic, which need neither Ray nor vLLM nor the converted model.

Tests that need one of them belong in tests/platform (libraries, no running app) or tests/integration (the
running app). The guards below fail the lane as soon as a test here crosses that line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HEAVY_MODULES = ("ray", "vllm")
UNIT_DIR = Path(__file__).parent
# Taken when pytest loads this file, before it imports the test modules next to it.
LOADED_BEFORE_THE_LANE = {name for name in HEAVY_MODULES if name in sys.modules}


@pytest.fixture(scope="session", autouse=True)
def _no_ray_or_vllm(request: pytest.FixtureRequest) -> Iterator[None]:
    """Checked when the lane runs alone: with other directories in the session, they import both."""
    yield
    if any(not item.path.is_relative_to(UNIT_DIR) for item in request.session.items):
        return
    imported = sorted(name for name in HEAVY_MODULES if name in sys.modules and name not in LOADED_BEFORE_THE_LANE)
    assert not imported, f"tests/unit imported {imported}: move the test that needs it to tests/platform"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    raise AssertionError(
        "tests/unit must not need the converted model: use `tokenizer`, or move the test to tests/platform"
    )
