"""What a downstream project needs in its conftest.py: only the ``anyio_backend`` fixture.

The rest of this file lets the example also run from the clipnormals source tree, where the
package is not installed (so neither importable from here nor registered as a pytest plugin).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("clipnormals") is None:  # the source tree, not an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def pytest_configure(config: pytest.Config) -> None:
    # Installed, clipnormals registers its plugin (entry point "clipnormals") by itself.
    manager = config.pluginmanager
    if not (manager.has_plugin("clipnormals") or manager.has_plugin("clipnormals.testing")):
        manager.import_plugin("clipnormals.testing")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # clipnormals is asyncio-only
