"""clipnormals.testing: its helpers, and its pytest plugin run as a downstream project runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clipnormals import RateLimit
from clipnormals.emulator import Emulator, EmulatorConfig, ServerLimit
from clipnormals.testing import (
    TEST_KEY,
    client_rate_limit,
    emulated,
    emulator_config,
)

from .conftest import image_bytes

REPO = Path(__file__).resolve().parents[2]


def test_the_default_test_config() -> None:
    config = emulator_config()
    assert dict(config.keys) == {TEST_KEY: 100}
    assert config.limit == ServerLimit(requests=60, per=0.6, retry_after="precise")


def test_emulator_config_changes() -> None:
    config = emulator_config(credits=3, rate="5/0.5", policy="nginx", cost=2)
    assert dict(config.keys) == {TEST_KEY: 3}
    assert config.limit is not None
    assert (config.limit.requests, config.limit.per, config.limit.policy) == (5, 0.5, "nginx")
    assert config.cost == 2
    base = EmulatorConfig(keys={"a": 1, "b": 2}, revoked={"b"})
    assert dict(emulator_config(base, key="c").keys) == {"c": 1}
    assert emulator_config(base, limit=None).limit is None


def test_client_rate_limit_matches_the_emulator() -> None:
    assert client_rate_limit(Emulator(emulator_config(rate=(10, 2.0)))) == RateLimit(
        requests=10, per=2.0
    )
    one_per_second = client_rate_limit(Emulator(emulator_config(rate=(1, 1.0))))
    assert one_per_second.requests / one_per_second.per == 1.0
    unlimited = client_rate_limit(Emulator(emulator_config(limit=None)))
    assert unlimited.requests / unlimited.per >= 1000


@pytest.mark.anyio
async def test_emulated_opens_a_client_on_a_fresh_emulator() -> None:
    async with emulated(emulator_config(credits=3)) as (client, emulator):
        result = await client.surface_normals(image_bytes("PNG", (40, 30)))
    assert result.credits_remaining == 2
    assert emulator.credits(TEST_KEY) == 2
    assert emulator.stats.successes == 1


PLUGIN_TESTS = """
import httpx
import pytest

import clipnormals
from clipnormals.emulator import ENDPOINT, EmulatorConfig

pytestmark = pytest.mark.anyio
IMAGE = {image!r}


async def test_defaults(clipnormals_client, clipnormals_emulator):
    result = await clipnormals_client.surface_normals(IMAGE)
    assert result.credits_remaining == 99
    assert clipnormals_emulator.config.limit.per == 0.6
    assert clipnormals_client.rate_limit.per == 0.6


@pytest.mark.clipnormals_emulator(credits=7, policy="token")
async def test_marker(clipnormals_client, clipnormals_emulator):
    assert clipnormals_emulator.credits("test-key") == 7
    assert clipnormals_emulator.config.limit.policy == "token"
    await clipnormals_client.surface_normals(IMAGE)
    assert clipnormals_emulator.credits("test-key") == 6


@pytest.mark.clipnormals_emulator(credits=0)
async def test_no_credits(clipnormals_client):
    with pytest.raises(clipnormals.InsufficientCreditsError):
        await clipnormals_client.surface_normals(IMAGE)


@pytest.mark.parametrize(
    "clipnormals_emulator",
    [{{"key": "other", "credits": 2}}, EmulatorConfig(keys={{"cfg": 1}}, limit=None)],
    indirect=True,
)
async def test_indirect(clipnormals_client, clipnormals_emulator):
    result = await clipnormals_client.surface_normals(IMAGE)
    assert result.credits_remaining == clipnormals_emulator.credits(
        clipnormals_emulator.default_key
    )


@pytest.mark.clipnormals_client(max_concurrency=1)
async def test_client_marker(clipnormals_client):
    assert clipnormals_client.max_concurrency == 1


def test_server(clipnormals_server):
    response = httpx.post(
        clipnormals_server.url + ENDPOINT,
        headers={{"x-api-key": "test-key"}},
        files={{"image_file": ("a.png", IMAGE)}},
    )
    assert response.status_code == 200
    assert clipnormals_server.emulator.stats.requests == 1
"""

PLUGIN_CONFTEST = """
import pytest

from clipnormals.testing import emulator_config


@pytest.fixture
def anyio_backend():
    return "asyncio"
"""


@pytest.mark.loopback
def test_the_pytest_plugin_in_a_project_of_its_own(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\naddopts = --strict-markers -p no:cacheprovider\nfilterwarnings = error\n"
    )
    (tmp_path / "conftest.py").write_text(textwrap.dedent(PLUGIN_CONFTEST))
    (tmp_path / "test_plugin.py").write_text(
        PLUGIN_TESTS.format(image=image_bytes("PNG", (48, 40)))
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # As an installed package would (entry point "clipnormals"), whether or not it is installed.
    command = [sys.executable, "-m", "pytest", "-p", "no:clipnormals", "-p", "clipnormals.testing"]
    done = subprocess.run(
        [*command, "-q", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "7 passed" in done.stdout


def test_the_plugin_module_imports_without_starlette() -> None:
    code = (
        "import sys, clipnormals.testing;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn')];"
        "print(bad)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip() == "[]"
