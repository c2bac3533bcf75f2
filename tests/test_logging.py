"""Logging as libraries do it: silent by default, a switch for a quick look, never the key."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

import clipnormals

from .fakeapi import KEY, FakeAPI, error, prepared

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(virtual_time_backend: object) -> object:
    return virtual_time_backend


def test_the_library_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("clipnormals").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


async def test_a_handled_429_is_info_not_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="clipnormals")
    api = FakeAPI(script=[error(429, "slow down", **{"retry-after": "1"})])
    async with clipnormals.AsyncClient(api_key=KEY, transport=api.transport()) as client:
        await client.surface_normals(prepared())
    about_429 = [r for r in caplog.records if "429" in r.getMessage()]
    assert about_429
    assert all(r.levelno <= logging.INFO for r in about_429)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


_SCRIPT = textwrap.dedent(
    """
    import asyncio, httpx, clipnormals
    from tests.fakeapi import KEY, FakeAPI, error, prepared

    async def main():
        api = FakeAPI(script=[error(500, "boom " + KEY)])
        async with clipnormals.AsyncClient(
            api_key=KEY, transport=api.transport(),
            retry=clipnormals.RetryPolicy(initial=0.01),
        ) as client:
            await client.surface_normals(prepared())

    asyncio.run(main())
    """
)


@pytest.mark.parametrize(("level", "shown"), [("debug", "DEBUG"), ("info", "INFO"), ("", None)])
def test_clipnormals_log_shows_the_library_lines(level: str, shown: str | None) -> None:
    env = {"CLIPNORMALS_LOG": level, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert KEY not in done.stderr
    if shown is None:
        assert done.stderr == ""
        return
    assert f"clipnormals {shown}" in done.stderr
    assert "attempt 1 failed" in done.stderr
    if shown == "DEBUG":
        assert "POST /portrait-surface-normals/v1 -> 200" in done.stderr


@pytest.mark.parametrize("when", ["before", "after"])
def test_clipnormals_log_beside_the_applications_logging_shows_each_line_once(when: str) -> None:
    configure = "import logging; logging.basicConfig(format='app: %(message)s')\n"
    script = _SCRIPT.replace("asyncio.run(main())", "")
    script = configure + script if when == "before" else script + configure
    script += "asyncio.run(main())\n"
    env = {"CLIPNORMALS_LOG": "info", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    failed = [line for line in done.stderr.splitlines() if "attempt 1 failed" in line]
    assert len(failed) == 1, done.stderr
    assert failed[0].startswith("app: ")  # through the application's handler
