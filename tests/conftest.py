from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from .vtime import VirtualTimeLoop

NO_SERVER = "the Redis tests need a server: set CLIPNORMALS_REDIS_URL or put redis-server on PATH"

# The Redis server for the tests. Taken out of the environment: the clipnormals command reads
# the same variable (--redis-url's default), and a command a test runs shares nothing through
# Redis unless the test says so.
_REDIS_URL = os.environ.pop("CLIPNORMALS_REDIS_URL", None)

# The mutation check (tests/mutants/run.py) and its catalogue are scripts, not tests.
collect_ignore = ["mutants"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def virtual_time_backend() -> tuple[str, dict[str, object]]:
    """Use as ``anyio_backend`` in a module whose tests run on a virtual clock."""
    return ("asyncio", {"loop_factory": VirtualTimeLoop})


# -- Redis, for the tests of clipnormals.redis ---------------------------------------------


def own_database(redis_url: str, db: int) -> str:
    """``redis_url`` pointed at database ``db``: a test that counts connections counts its own
    processes' only, whatever else uses the server."""
    return f"{redis_url.rsplit('/', 1)[0]}/{db}"


def connections_to(raw: Any, db: int) -> int:
    """Connections the server has to database ``db`` (``raw``'s own included)."""
    return sum(1 for c in raw.client_list() if c.get("db") == str(db))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers_ping(port: int, proc: subprocess.Popen[bytes]) -> bool:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                time.sleep(0.05)  # waiting for a server to come up, not timing anything
        return False
    finally:
        client.close()


@contextlib.contextmanager
def _private_server(binary: str) -> Iterator[str]:
    for _ in range(3):  # the free port may be taken between the probe and the bind
        port = free_port()
        command = [binary, "--port", str(port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]  # nothing written to disk
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if _answers_ping(port, proc):
                yield f"redis://127.0.0.1:{port}/0"
                return
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    pytest.fail("redis-server did not start on a loopback port")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = _REDIS_URL
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(NO_SERVER)
        pytest.skip(NO_SERVER)
    with _private_server(binary) as url:
        yield url


@pytest.fixture
def name() -> str:
    """A fresh quota name per test: tests never share a bucket, even on a shared server."""
    return f"test-{uuid.uuid4().hex[:12]}"
