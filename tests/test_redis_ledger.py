"""RedisLedger against a real redis-server: the local ledger's failure cases, across processes.

Each ``RedisLedger`` instance has its own connection and owner id, exactly as a separate process
would; the tests that need a process to die run a real child process and SIGKILL it. Leases are
short (``LEASE``) so that expiry happens within a test, and every wait for it is bounded with a
generous margin: the tests assert what the guarantee says (nothing blocks for ever, nothing is
given back that may have been charged, never a 402), not how fast a loaded machine gets there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import sys
import textwrap
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio

import clipnormals
from clipnormals import CreditPolicy
from clipnormals._core.credits import Ledger
from clipnormals._redis.connection import RedisConnection
from clipnormals.emulator import Emulator, EmulatorConfig, Faults
from clipnormals.redis import RedisLedger

from .fakeapi import KEY, FakeAPI, error, prepared

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

LEASE = 2.0
FAST = clipnormals.RateLimit(requests=6000, per=60.0)
ROOT = Path(__file__).resolve().parents[1]


def _charged(remaining: int) -> dict[str, str]:
    return {"x-credits-consumed": "1", "x-remaining-credits": str(remaining)}


@contextlib.asynccontextmanager
async def _ledgers(
    url: str, name: str, count: int, policy: CreditPolicy | None = None, lease: float = LEASE
) -> AsyncIterator[list[RedisLedger]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(RedisLedger(policy, url=url, name=name, lease=lease))
            for _ in range(count)
        ]


def _client(api: FakeAPI, ledger: Ledger, **kwargs: object) -> clipnormals.AsyncClient:
    options: dict[str, object] = {
        "api_key": KEY,
        "transport": api.transport(),
        "rate_limit": FAST,
        "ledger": ledger,
    }
    options.update(kwargs)
    return clipnormals.AsyncClient(**options)  # type: ignore[arg-type]


async def _state(url: str, name: str) -> dict[str, int]:
    async with redis.asyncio.Redis.from_url(url, decode_responses=True) as raw:
        found: dict[str, str] = await raw.hgetall(f"clipnormals:{{{name}}}:credits:state")
    return {k: int(v) for k, v in found.items() if k != "probe"}


async def _hash(url: str, key: str) -> dict[str, int]:
    async with redis.asyncio.Redis.from_url(url, decode_responses=True) as raw:
        found: dict[str, str] = await raw.hgetall(key)
    return {k: int(v) for k, v in found.items()}


def test_it_is_a_ledger() -> None:
    ledger = RedisLedger(url="redis://127.0.0.1:1/0")
    assert isinstance(ledger, clipnormals.Ledger)
    assert "127.0.0.1:1/0" in repr(ledger)


# -- the balance and the budget, shared -----------------------------------------------------


@pytest.mark.parametrize("processes", [2, 5])
async def test_processes_sharing_a_balance_never_get_a_402(
    redis_url: str, name: str, processes: int
) -> None:
    api = FakeAPI(credits=17, latency=lambda: 0.02)
    done: list[int] = []
    async with _ledgers(redis_url, name, processes) as ledgers:

        async def run(ledger: RedisLedger, first: int) -> None:
            async with _client(api, ledger, max_concurrency=4) as client:
                items = [i async for i in client.map([prepared(first + j) for j in range(12)])]
            done.extend(1 for i in items if i.ok)
            assert all(
                isinstance(i.error, clipnormals.CreditBudgetError) for i in items if not i.ok
            )

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for n, ledger in enumerate(ledgers):
                    tg.start_soon(run, ledger, 100 * n)
        await ledgers[0].refresh()
        view = ledgers[0]
    assert 402 not in api.statuses
    assert api.charged == 17 == len(done)  # every credit used, not one asked for beyond
    assert (view.consumed, view.reserved, view.uncertain, view.remaining) == (17, 0, 0, 0)


async def test_the_budget_caps_all_processes_together(redis_url: str, name: str) -> None:
    api = FakeAPI(credits=1000, latency=lambda: 0.02)
    async with _ledgers(redis_url, name, 3, CreditPolicy(budget=9)) as ledgers:

        async def run(ledger: RedisLedger) -> None:
            async with _client(api, ledger, max_concurrency=3) as client:
                async for _ in client.map([prepared(j) for j in range(10)]):
                    pass

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for ledger in ledgers:
                    tg.start_soon(run, ledger)
        with pytest.raises(clipnormals.CreditBudgetError, match="budget"):
            ledgers[1].check()
    assert api.charged == 9
    assert len(api.arrivals) == 9


async def test_the_reserve_is_left_untouched_by_all_processes(redis_url: str, name: str) -> None:
    api = FakeAPI(credits=12)
    async with (
        _ledgers(redis_url, name, 2, CreditPolicy(reserve=3)) as (a, b),
        _client(api, a) as ca,
        _client(api, b) as cb,
    ):
        results = [i async for i in ca.map([prepared(j) for j in range(6)])]
        results += [i async for i in cb.map([prepared(j) for j in range(6)])]
    assert sum(i.ok for i in results) == 9
    assert api.credits == 3


async def test_one_probe_in_all_until_the_balance_is_known(redis_url: str, name: str) -> None:
    async with _ledgers(redis_url, name, 2) as (a, b):
        async with a.reserve() as probe:
            with anyio.move_on_after(0.5) as waited:
                async with b.reserve():
                    pass
            assert waited.cancelled_caught  # the second process waited for the probe
            probe.answered(200, _charged(10))
        with anyio.fail_after(5):  # ...and goes as soon as it is settled
            async with b.reserve() as second:
                second.answered(200, _charged(9))
        await a.refresh()
        assert (a.remaining, a.consumed, a.reserved) == (9, 2, 0)


async def test_a_stale_balance_from_another_process_is_not_believed(
    redis_url: str, name: str
) -> None:
    async with _ledgers(redis_url, name, 2) as (a, b):
        async with a.reserve() as probe:
            probe.answered(200, _charged(10))
        # three attempts in flight, from two processes; each is settled when its block ends
        cm1, cm2, cm3 = a.reserve(), b.reserve(), a.reserve()
        r1, r2, r3 = await cm1.__aenter__(), await cm2.__aenter__(), await cm3.__aenter__()
        r1.answered(200, _charged(7))  # the server had charged all three when this answered
        await cm1.__aexit__(None, None, None)
        await a.refresh()
        assert a.remaining == 7
        r2.answered(200, _charged(9))  # an older answer, arriving late: not believed
        await cm2.__aexit__(None, None, None)
        await b.refresh()
        assert b.remaining == 7
        r3.answered(200, _charged(50))  # far above anything reordering explains: a top-up
        await cm3.__aexit__(None, None, None)
        await a.refresh()
        assert (a.remaining, a.reserved, a.consumed) == (50, 0, 4)


async def test_an_unanswered_request_counts_against_the_shared_budget(
    redis_url: str, name: str
) -> None:
    api = FakeAPI(credits=None, script=[httpx.ReadTimeout("no answer")] * 2)
    async with _ledgers(redis_url, name, 2, CreditPolicy(budget=3)) as (a, b):
        async with _client(api, a, retry=clipnormals.RetryPolicy(attempts=2)) as ca:
            with pytest.raises(clipnormals.APITimeoutError):
                await ca.surface_normals(prepared())
        async with _client(api, b) as cb:
            await cb.surface_normals(prepared())  # the third credit of the budget
            with pytest.raises(clipnormals.CreditBudgetError, match="possibly charged"):
                await cb.surface_normals(prepared())
        assert (b.uncertain, b.consumed) == (2, 1)
    assert len(api.arrivals) == 3


async def test_a_charged_answer_whose_body_is_lost_is_counted(redis_url: str, name: str) -> None:
    truncated = httpx.Response(
        200,
        content=b"\xff\xd8\xff\xe0" + b"\0" * 20,
        headers={"content-type": "image/jpeg", "x-credits-consumed": "1"},
    )
    api = FakeAPI(credits=None)
    api.script = [truncated] * 50
    async with _ledgers(redis_url, name, 2, CreditPolicy(budget=3)) as (a, b):
        async with _client(api, a) as client:
            with pytest.raises(clipnormals.CreditBudgetError):
                await client.surface_normals(prepared())
        await b.refresh()
        assert b.consumed == 3
    assert len(api.arrivals) == 3


def _truncating(credits: int, seed: int) -> Emulator:
    return Emulator(
        EmulatorConfig(
            keys={KEY: credits}, faults=Faults(truncate_jpeg=0.3), synth="canned", seed=seed
        )
    )


@pytest.mark.parametrize("seed", [1, 2])
async def test_truncated_bodies_across_processes(redis_url: str, name: str, seed: int) -> None:
    # the budget: a hard cap on what the server charged them all
    emulator = _truncating(1000, seed)
    retry = clipnormals.RetryPolicy(attempts=20, initial=0.01, max_backoff=0.05)

    async def run(ledger: RedisLedger, first: int) -> None:
        async with clipnormals.AsyncClient(
            api_key=KEY,
            base_url="http://127.0.0.1",
            transport=emulator.transport(),
            rate_limit=FAST,
            retry=retry,
            ledger=ledger,
        ) as client:
            async for _ in client.map([prepared(first + j) for j in range(15)]):
                pass

    async with _ledgers(redis_url, name, 2, CreditPolicy(budget=12)) as ledgers:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for n, ledger in enumerate(ledgers):
                    tg.start_soon(run, ledger, 100 * n)
        await ledgers[0].refresh()
        consumed = ledgers[0].consumed
    assert emulator.stats.faults.get("truncate-jpeg", 0) > 0
    assert emulator.stats.credits_charged <= 12
    assert consumed == emulator.stats.credits_charged

    # the balance: every credit used, never a 402
    emulator = _truncating(15, seed)
    async with _ledgers(redis_url, f"{name}-balance", 2) as ledgers:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for n, ledger in enumerate(ledgers):
                    tg.start_soon(run, ledger, 100 * n)
        await ledgers[1].refresh()
        assert (ledgers[1].consumed, ledgers[1].remaining) == (15, 0)
    assert emulator.stats.statuses.get(402, 0) == 0
    assert emulator.stats.credits_charged == 15


async def test_a_403_halts_every_process(redis_url: str, name: str) -> None:
    api = FakeAPI(script=[error(403, "This api key has been revoked")])
    async with (
        _ledgers(redis_url, name, 2) as (a, b),
        _client(api, a) as ca,
        _client(api, b) as cb,
    ):
        with pytest.raises(clipnormals.PermissionDeniedError):
            await ca.surface_normals(prepared())
        with pytest.raises(clipnormals.ClientHaltedError) as info:
            await cb.surface_normals(prepared())
        assert isinstance(info.value.cause, clipnormals.PermissionDeniedError)
        assert cb.halted
    assert api.statuses == [403]  # the second process sent nothing


# -- leases ---------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import asyncio, contextlib, sys
    import clipnormals
    from clipnormals.redis import RedisLedger

    async def main(url, name, count, budget, lease):
        policy = clipnormals.CreditPolicy(budget=None if budget < 0 else budget)
        async with RedisLedger(policy, url=url, name=name, lease=lease) as ledger:
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(count):
                    await stack.enter_async_context(ledger.reserve())
                print("held", ledger.owner, flush=True)
                await asyncio.sleep(120)

    url, name, count, budget, lease = sys.argv[1:]
    asyncio.run(main(url, name, int(count), int(budget), float(lease)))
    """
)


@contextlib.asynccontextmanager
async def _holder(
    url: str, name: str, count: int, budget: int | None
) -> AsyncIterator[tuple[int, str]]:
    """A child process holding ``count`` reservations; yields its pid and owner id. Nothing
    here blocks the event loop: a blocked loop would stall this process's own lease."""
    cap = -1 if budget is None else budget
    command = [sys.executable, "-c", HOLDER, url, name, str(count), str(cap), str(LEASE)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    async with await anyio.open_process(command, env=env, stderr=None) as proc:
        assert proc.stdout is not None
        line = b""
        with anyio.fail_after(60):
            while not line.endswith(b"\n"):
                line += await proc.stdout.receive(1)
        words = line.decode().split()
        assert words[:1] == ["held"], words
        try:
            yield proc.pid, words[1]
        finally:
            with contextlib.suppress(ProcessLookupError):  # killed by the test already
                proc.kill()


async def test_a_killed_process_blocks_the_budget_only_for_its_lease(
    redis_url: str, name: str
) -> None:
    api = FakeAPI(credits=1000, latency=lambda: 0.01)
    policy = CreditPolicy(budget=6)
    async with (
        _ledgers(redis_url, name, 1, policy) as (ledger,),
        _client(api, ledger, max_concurrency=2) as client,
    ):
        await client.surface_normals(prepared())  # the probe: the balance is known
        async with _holder(redis_url, name, 4, 6) as (pid, owner):
            items: list[clipnormals.MapItem[clipnormals.PreparedImage]] = []
            finished = anyio.Event()
            killed_at = 0.0

            async def run() -> None:
                async for item in client.map([prepared(j) for j in range(5)]):
                    items.append(item)
                finished.set()

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run)
                    # Alive, the holder keeps its four credits for several leases...
                    await anyio.sleep(3 * LEASE)
                    assert not finished.is_set()
                    assert sum(i.ok for i in items) == 1  # 1 + 1 + 4 reserved = 6
                    held = await _hash(redis_url, f"clipnormals:{{{name}}}:credits:held")
                    assert held[owner] == 4
                    os.kill(pid, signal.SIGKILL)
                    killed_at = anyio.current_time()
                    await finished.wait()
                    waited = anyio.current_time() - killed_at
    # ...dead, its credits stop blocking after the lease, counted as possibly charged: the
    # budget (a cap on what the server may have charged) is now spent, and the rest is refused
    # (the lease ran from its last renewal, at most a third of it before the kill)
    assert LEASE / 2 < waited < LEASE + 10
    assert sum(i.ok for i in items) == 1
    assert all(isinstance(i.error, clipnormals.CreditBudgetError) for i in items if not i.ok)
    state = await _state(redis_url, name)
    assert (state["reserved"], state["uncertain"], state["consumed"]) == (0, 4, 2)
    assert await _hash(redis_url, f"clipnormals:{{{name}}}:credits:held") == {}
    expired = await _hash(redis_url, f"clipnormals:{{{name}}}:credits:expired")
    assert sum(n for hold, n in expired.items() if hold.startswith(f"{owner}/")) == 4
    assert api.charged == 2


async def test_a_killed_process_credits_come_back_on_the_balance(redis_url: str, name: str) -> None:
    api = FakeAPI(credits=30, latency=lambda: 0.05)
    async with (
        _ledgers(redis_url, name, 1) as (ledger,),
        _client(api, ledger, max_concurrency=1) as client,
    ):
        await client.surface_normals(prepared())  # balance known: 29
        async with _holder(redis_url, name, 4, None) as (pid, owner):
            with anyio.fail_after(60):
                first = [i async for i in client.map([prepared(j) for j in range(10)])]
                await anyio.sleep(2 * LEASE)
                held = await _hash(redis_url, f"clipnormals:{{{name}}}:credits:held")
                assert held[owner] == 4  # still alive: still held
                os.kill(pid, signal.SIGKILL)
                await anyio.sleep(LEASE)
        # After the lease the four are uncertain; the first answer reserved after that
        # reports the balance, which covers them: every one of the 19 credits left is
        # usable (had the dead holds stayed, only 15 would be).
        with anyio.fail_after(60):
            second = [i async for i in client.map([prepared(j) for j in range(25)])]
    assert all(i.ok for i in first)
    assert sum(i.ok for i in second) == 19
    assert 402 not in api.statuses
    state = await _state(redis_url, name)
    assert (state["remaining"], state["uncertain"], state["unreported"]) == (0, 4, 0)


async def test_a_lapsed_lease_is_final_and_a_late_settlement_is_applied(
    redis_url: str, name: str
) -> None:
    async with _ledgers(redis_url, name, 2) as (a, b):
        async with a.reserve() as probe:
            probe.answered(200, _charged(10))
        stale_owner = a.owner
        async with a.reserve() as late:
            # a's process froze for longer than its lease: its lease lapses...
            async with redis.asyncio.Redis.from_url(redis_url) as raw:
                await raw.zadd(f"clipnormals:{{{name}}}:owners", {stale_owner: 1})
            await b.refresh()
            assert (b.reserved, b.uncertain) == (0, 1)  # ...and its hold is uncertain
            async with a.reserve() as fresh:  # a goes on under a new owner id
                assert a.owner != stale_owner
                fresh.answered(200, _charged(8))
            late.answered(200, _charged(9))
        # the late answer takes its credit back out of "uncertain": it was charged
        await b.refresh()
        assert (b.consumed, b.uncertain, b.reserved) == (3, 0, 0)


async def test_a_settlement_written_twice_is_applied_once(redis_url: str, name: str) -> None:
    async with _ledgers(redis_url, name, 1) as (ledger,):
        async with ledger.reserve() as probe:
            probe.answered(200, _charged(10))
        async with ledger.reserve() as hold:
            hold.answered(200, _charged(9))
        await ledger._write(hold)  # type: ignore[arg-type]  # its reply was lost: written again
        await ledger.refresh()
        assert (ledger.consumed, ledger.reserved, ledger.remaining) == (2, 0, 9)


async def test_a_lost_grant_becomes_uncertain_after_the_lease(
    redis_url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _ledgers(redis_url, name, 2) as (a, b):
        async with a.reserve() as probe:
            probe.answered(200, _charged(10))
        first_owner = a.owner
        run = RedisConnection.run

        async def lost_reply(
            conn: RedisConnection, script: Any, keys: list[str], args: list[str | int]
        ) -> Any:
            reply = await run(conn, script, keys, args)
            if args[0] == "reserve":  # granted on the server, and the reply lost on the way
                raise clipnormals.ClipnormalsError("Redis did not answer")
            return reply

        monkeypatch.setattr(RedisConnection, "run", lost_reply)
        with pytest.raises(clipnormals.ClipnormalsError, match="did not answer"):
            async with a.reserve():
                pass
        monkeypatch.undo()
        assert a.owner != first_owner  # no longer renewed: that lease will lapse
        await b.refresh()
        assert b.reserved == 1  # nobody can settle it; it is not given back either...
        with anyio.fail_after(LEASE + 10):
            while b.reserved:
                await anyio.sleep(0.1)
                await b.refresh()
        assert b.uncertain == 1  # ...it may have been charged


# -- life cycle -----------------------------------------------------------------------------


async def test_a_ledger_must_be_opened_and_is_refused_after_closing(
    redis_url: str, name: str
) -> None:
    ledger = RedisLedger(url=redis_url, name=name)
    with pytest.raises(clipnormals.ClientClosedError, match="not open"):
        async with ledger.reserve():
            pass
    async with ledger, ledger.reserve():
        pass
    with pytest.raises(clipnormals.ClientClosedError, match="closed"):
        async with ledger.reserve():
            pass
    # leaving removed this owner's lease; nothing is held
    state = await _state(redis_url, name)
    assert state.get("reserved", 0) == 0


async def test_another_event_loop_is_refused_before_any_io(redis_url: str, name: str) -> None:
    async def use(ledger: RedisLedger) -> None:
        async with ledger.reserve():
            pass

    async with RedisLedger(url=redis_url, name=name) as ledger:
        await use(ledger)
        with pytest.raises(clipnormals.ClientClosedError, match="event loop"):
            await anyio.to_thread.run_sync(lambda: asyncio.run(use(ledger)))
        await use(ledger)  # still fine in its own loop


def _in_child(work: Callable[[], str]) -> str:
    """Run ``work`` in a forked child; what it reported."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # forking with threads: on purpose
        pid = os.fork()
    if pid == 0:
        try:
            message = work()
        except BaseException as exc:
            message = f"{type(exc).__name__}: {exc}"
        os.write(write, message.encode()[:4000])
        os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 30.0)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            return "hung"
        return os.read(read, 4096).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)


def test_a_forked_child_is_refused_before_any_io(redis_url: str, name: str) -> None:
    async def main() -> str:
        async with RedisLedger(url=redis_url, name=name, lease=LEASE) as ledger:
            async with ledger.reserve():
                pass

            def child() -> str:
                async def use() -> None:
                    async with ledger.reserve():
                        pass

                asyncio.run(use())
                return "reserved"

            return _in_child(child)

    report = asyncio.run(main())
    assert report.startswith("ClientClosedError"), report
    assert "fork" in report


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="either"):
        RedisLedger(url="redis://localhost", redis=redis.asyncio.Redis())
    with pytest.raises(ValueError, match="name"):
        RedisLedger(name="a{b")
    with pytest.raises(ValueError, match="lease"):
        RedisLedger(lease=0)
    with pytest.raises(ValueError, match="ttl"):
        RedisLedger(lease=60, ttl=30)
    with pytest.raises(TypeError, match="CreditPolicy"):
        RedisLedger(5)  # type: ignore[arg-type]


async def test_credits_and_ledger_together_are_refused(redis_url: str) -> None:
    with pytest.raises(ValueError, match="not both"):
        clipnormals.AsyncClient(
            api_key=KEY, credits=CreditPolicy(budget=1), ledger=RedisLedger(url=redis_url)
        )
