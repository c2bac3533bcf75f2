"""What a project's conftest.py needs to test with the clipnormals emulator.

Only the ``anyio_backend`` fixture: installed, clipnormals registers its pytest plugin (the
``clipnormals_*`` fixtures and markers) by itself. ``pytest_configure`` below loads the plugin
by name when the package runs from a source tree without being installed.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    manager = config.pluginmanager
    if not (manager.has_plugin("clipnormals") or manager.has_plugin("clipnormals.testing")):
        manager.import_plugin("clipnormals.testing")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # clipnormals is asyncio-only
