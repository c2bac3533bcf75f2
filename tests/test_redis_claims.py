"""RedisClaims against a real redis-server: an image is uploaded once, and once more only when
the process that claimed it died; closing lets go of everything, socket included."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio

import clipnormals
from clipnormals.emulator import EmulatorConfig, ServerLimit, start_in_thread
from clipnormals.redis import Claim, RedisClaims, RedisLedger, RedisLimiter

from .fakeapi import KEY, prepared

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

LEASE = 1.0
ROOT = Path(__file__).resolve().parents[1]


async def test_granted_held_done_and_released(redis_url: str, name: str) -> None:
    async with (
        RedisClaims(url=redis_url, name=name, lease=LEASE) as a,
        RedisClaims(url=redis_url, name=name, lease=LEASE) as b,
    ):
        assert await a.claim("h1") == Claim(state="granted")
        assert await a.claim("h1") == Claim(state="granted")  # still mine
        held = await b.claim("h1")
        assert (held.state, held.holder) == ("held", a.owner)
        assert await a.done("h1", "out/h1.jpg") is True
        done = await b.claim("h1")
        assert (done.state, done.record, done.holder) == ("done", "out/h1.jpg", a.owner)
        # released unfinished: the next to ask gets it
        assert (await b.claim("h2")).granted
        await b.release("h2")
        assert (await a.claim("h2")).granted
        await a.release("h2")


async def test_wait_returns_once_the_holder_finishes(redis_url: str, name: str) -> None:
    async with (
        RedisClaims(url=redis_url, name=name, lease=LEASE) as a,
        RedisClaims(url=redis_url, name=name, lease=LEASE) as b,
    ):
        assert (await a.claim("h")).granted
        found: list[Claim] = []

        async def waiter() -> None:
            found.append(await b.wait("h", poll=0.02))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.sleep(3 * LEASE)  # a live holder keeps it, lease after lease
                assert found == []
                await a.done("h", "r")
        assert found[0].state == "done"


async def test_closing_releases_what_is_still_held(redis_url: str, name: str) -> None:
    async with RedisClaims(url=redis_url, name=name, lease=LEASE) as b:
        async with RedisClaims(url=redis_url, name=name, lease=LEASE) as a:
            assert (await a.claim("h")).granted
        assert (await b.claim("h")) == Claim(state="granted")  # at once, no lease to wait


HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from clipnormals.redis import RedisClaims

    async def main(url, name, lease):
        async with RedisClaims(url=url, name=name, lease=lease) as claims:
            assert (await claims.claim("h")).granted
            print("held", claims.owner, flush=True)
            await asyncio.sleep(120)

    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
    """
)


@contextlib.contextmanager
def _holder(url: str, name: str) -> Iterator[tuple[int, str]]:
    """A child process holding the claim "h"; yields its pid and owner id."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, name, str(LEASE)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:1] == ["held"], line
        yield proc.pid, line[1]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_a_killed_holders_claim_is_taken_over_after_its_lease(
    redis_url: str, name: str
) -> None:
    with _holder(redis_url, name) as (pid, owner):
        async with RedisClaims(url=redis_url, name=name, lease=LEASE) as claims:
            await anyio.sleep(2 * LEASE)
            assert (await claims.claim("h")).state == "held"  # alive: kept
            os.kill(pid, signal.SIGKILL)
            with anyio.fail_after(LEASE + 10):
                taken = await claims.wait("h", poll=0.05)
            assert taken.granted
            assert taken.taken_over
            assert taken.holder == owner
            assert (await claims.peek("h"))["takeovers"] == "1"


async def test_bad_use_is_refused(redis_url: str, name: str) -> None:
    claims = RedisClaims(url=redis_url, name=name)
    with pytest.raises(clipnormals.ClientClosedError, match="not open"):
        await claims.claim("h")
    async with claims:
        for bad in ("", "tab\there", "x" * 513):
            with pytest.raises(ValueError, match="claim key"):
                await claims.claim(bad)
        with pytest.raises(ValueError, match="64 KiB"):
            await claims.done("h", "x" * (64 * 1024 + 1))
    with pytest.raises(clipnormals.ClientClosedError, match="closed"):
        await claims.claim("h")


# -- clean ownership: nothing left open -----------------------------------------------------


def _sockets() -> int:
    """Sockets this process holds open (Linux)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the directory's own descriptor, gone by now
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def _redis_clients(url: str) -> int:
    import redis as sync_redis

    with sync_redis.Redis.from_url(url) as raw:
        return len(raw.client_list()) - 1  # without this connection


@pytest.mark.loopback
def test_the_blocking_client_closes_its_limiter_and_ledger_and_leaks_no_socket(
    redis_url: str, name: str
) -> None:
    rl = clipnormals.RateLimit(requests=600, per=6.0)
    config = EmulatorConfig(keys={KEY: 1000}, limit=ServerLimit(requests=600, per=6.0))
    with start_in_thread(config) as server:
        gc.collect()
        sockets, clients = _sockets(), _redis_clients(redis_url)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                with clipnormals.Client(
                    api_key=KEY,
                    base_url=server.url,
                    rate_limit=rl,
                    limiter=RedisLimiter(rl, url=redis_url, name=name),
                    ledger=RedisLedger(url=redis_url, name=name),
                    max_concurrency=4,
                ) as client:
                    assert all(item.ok for item in client.map([prepared(i) for i in range(6)]))
                    assert _redis_clients(redis_url) > clients  # it did connect
            gc.collect()
        assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
        assert _sockets() == sockets
        assert _redis_clients(redis_url) == clients


async def test_async_owners_close_everything_they_opened(redis_url: str, name: str) -> None:
    gc.collect()
    sockets = _sockets()
    clients = await anyio.to_thread.run_sync(_redis_clients, redis_url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with (
            RedisLimiter(clipnormals.RateLimit(), url=redis_url, name=name) as limiter,
            RedisLedger(url=redis_url, name=name) as ledger,
            RedisClaims(url=redis_url, name=name) as claims,
        ):
            await limiter.cooldown(0.0)
            async with ledger.reserve():
                pass
            await claims.claim("h")
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert _sockets() == sockets
    assert await anyio.to_thread.run_sync(_redis_clients, redis_url) == clients
    # ...and a client passed in is left open for its owner
    async with redis.asyncio.Redis.from_url(redis_url) as raw:
        async with RedisLedger(redis=raw, name=name) as ledger, ledger.reserve():
            pass
        assert await raw.ping()
