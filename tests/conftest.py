from __future__ import annotations

import pytest

from .vtime import VirtualTimeLoop


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def virtual_time_backend() -> tuple[str, dict[str, object]]:
    """Use as ``anyio_backend`` in a module whose tests run on a virtual clock."""
    return ("asyncio", {"loop_factory": VirtualTimeLoop})
