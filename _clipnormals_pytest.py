"""The clipnormals pytest plugin: markers and fixtures that load clipnormals on first use.

pytest imports every installed plugin when it starts, in every project, whether its tests use
the plugin or not. Importing any module inside the ``clipnormals`` package first runs the
package's ``__init__``, which brings in numpy, Pillow, httpx and the whole client (about half a
second). So the plugin is this top-level module, registered under the entry point name
``clipnormals`` (``-p no:clipnormals`` turns it off): it imports only pytest, registers the
markers, and defines the fixtures, whose bodies import :mod:`clipnormals.testing` and the
emulator when a test first asks for one. ``tests/test_plugin.py`` checks that a pytest run which
uses no fixture imports nothing of clipnormals; ``benchmarks/plugin.py`` times it.

The fixtures and markers are documented in :mod:`clipnormals.testing`, which re-exports them so
that ``-p clipnormals.testing`` keeps working where the package is not installed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from clipnormals import AsyncClient
    from clipnormals.emulator import Emulator, EmulatorConfig, RunningServer

__all__ = [
    "clipnormals_client",
    "clipnormals_emulator",
    "clipnormals_emulator_config",
    "clipnormals_server",
    "pytest_configure",
]


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers (projects may run pytest with ``--strict-markers``)."""
    config.addinivalue_line(
        "markers",
        "clipnormals_emulator(config=None, **changes): configure the clipnormals_emulator "
        "fixture (an EmulatorConfig and/or clipnormals.testing.emulator_config keywords)",
    )
    config.addinivalue_line(
        "markers",
        "clipnormals_client(**options): AsyncClient arguments for clipnormals_client",
    )


def _configure(
    base: EmulatorConfig, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> EmulatorConfig:
    from clipnormals.emulator import EmulatorConfig
    from clipnormals.testing import emulator_config

    if len(args) > 1 or (args and not isinstance(args[0], EmulatorConfig)):
        raise TypeError(
            "clipnormals_emulator takes one EmulatorConfig and/or emulator_config() keywords"
        )
    return emulator_config(args[0] if args else base, **kwargs)


@pytest.fixture
def clipnormals_emulator_config() -> EmulatorConfig:
    """The base configuration of ``clipnormals_emulator``: :func:`emulator_config`'s
    default. Override this fixture in a conftest.py to change it for a whole project."""
    from clipnormals.testing import emulator_config

    return emulator_config()


@pytest.fixture
def clipnormals_emulator(
    request: pytest.FixtureRequest, clipnormals_emulator_config: EmulatorConfig
) -> Emulator:
    """A fresh emulator: the base configuration, then the ``clipnormals_emulator``
    marker's changes, then an indirect parameter's (an EmulatorConfig or a dict)."""
    from clipnormals.emulator import Emulator, EmulatorConfig

    config = clipnormals_emulator_config
    marker = request.node.get_closest_marker("clipnormals_emulator")
    if marker is not None:
        config = _configure(config, marker.args, marker.kwargs)
    param = getattr(request, "param", None)
    if isinstance(param, EmulatorConfig):
        config = param
    elif isinstance(param, Mapping):
        config = _configure(config, (), param)
    elif param is not None:
        raise TypeError("an indirect clipnormals_emulator parameter must be a config or dict")
    return Emulator(config)


@pytest.fixture
async def clipnormals_client(
    request: pytest.FixtureRequest, clipnormals_emulator: Emulator
) -> AsyncIterator[AsyncClient]:
    """An opened AsyncClient on ``clipnormals_emulator``, closed after the test."""
    from clipnormals.testing import client_for

    marker = request.node.get_closest_marker("clipnormals_client")
    options = dict(marker.kwargs) if marker is not None else {}
    async with client_for(clipnormals_emulator, **options) as client:
        yield client


@pytest.fixture
def clipnormals_server(clipnormals_emulator: Emulator) -> Iterator[RunningServer]:
    """``clipnormals_emulator`` served on a loopback port (``.url``) for the test."""
    from clipnormals.emulator import start_in_thread

    with start_in_thread(clipnormals_emulator) as server:
        yield server
