"""Fixtures for the tests against real rate limiters: the emulator behind nginx or HAProxy.

Without the nginx or haproxy binary these tests fail when ``CI`` is set (a skip would hide a
failure there; ``.ci/run`` installs both) and are skipped otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from . import servers


def _need(binary: str | None, name: str) -> None:
    if binary is None:
        message = f"these tests need {name} (Debian package {name!r}; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def upstream() -> Iterator[str]:
    """One emulator, in its own process, for every test of the session (no limit of its own)."""
    with servers.emulator() as url:
        yield url


@pytest.fixture
def nginx_binary() -> None:
    _need(servers.NGINX, "nginx")


@pytest.fixture
def haproxy_binary() -> None:
    _need(servers.HAPROXY, "haproxy")
