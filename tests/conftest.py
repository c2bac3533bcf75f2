from __future__ import annotations

import pytest

from .vtime import VirtualTimeLoop

# The mutation check (tests/mutants/run.py) and its catalogue are scripts, not tests.
collect_ignore = ["mutants"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def virtual_time_backend() -> tuple[str, dict[str, object]]:
    """Use as ``anyio_backend`` in a module whose tests run on a virtual clock."""
    return ("asyncio", {"loop_factory": VirtualTimeLoop})
