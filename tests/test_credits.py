"""The credit ledger: exactly the images the balance allows, and not one request more."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

import clipnormals
import clipnormals.emulator
from clipnormals._core.credits import CreditLedger, parse_credit_header

from .fakeapi import KEY, FakeAPI, prepared

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(virtual_time_backend: object) -> object:
    return virtual_time_backend


def _client(api: FakeAPI, **kwargs: object) -> clipnormals.AsyncClient:
    options: dict[str, object] = {
        "api_key": KEY,
        "transport": api.transport(),
        "rate_limit": clipnormals.RateLimit(requests=600, per=60.0),
    }
    options.update(kwargs)
    return clipnormals.AsyncClient(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("balance", [0, 1, 7, 23])
async def test_balance_allows_exactly_its_images_and_no_402(balance: int) -> None:
    api = FakeAPI(credits=balance, latency=lambda: 2.0)
    async with _client(api) as client:
        items = [i async for i in client.map([prepared(i % 4) for i in range(40)])]
    done = [i for i in items if i.ok]
    not_sent = [i for i in items if isinstance(i.error, clipnormals.CreditBudgetError)]
    if balance == 0:
        # The first request is the probe: the server says 402 and the client halts.
        assert api.statuses == [402]
        assert len(done) == 0
    else:
        assert 402 not in api.statuses
        assert len(done) == balance
        assert len(not_sent) == 40 - balance
        assert len(api.arrivals) == balance
        assert all(i.attempts == 0 for i in not_sent)
    assert client.credits.reserved == 0


async def test_reserve_is_left_untouched() -> None:
    api = FakeAPI(credits=10)
    async with _client(api, credits=clipnormals.CreditPolicy(reserve=3)) as client:
        items = [i async for i in client.map([prepared()] * 20)]
    assert sum(i.ok for i in items) == 7
    assert api.credits == 3
    assert client.credits.remaining == 3


async def test_budget_caps_spending() -> None:
    api = FakeAPI(credits=1000, latency=lambda: 1.0)
    async with _client(api, credits=clipnormals.CreditPolicy(budget=5)) as client:
        items = [i async for i in client.map([prepared()] * 20)]
        with pytest.raises(clipnormals.CreditBudgetError, match="budget"):
            await client.surface_normals(prepared())
    assert sum(i.ok for i in items) == 5
    assert api.charged == 5
    assert len(api.arrivals) == 5


async def test_failed_requests_give_their_credit_back() -> None:
    # Balance 3, and the first two attempts fail with 400: three images still succeed.
    from .fakeapi import error

    api = FakeAPI(credits=3, script=[error(400, "bad"), error(400, "bad")])
    async with _client(api, max_concurrency=1) as client:
        items = [i async for i in client.map([prepared(i) for i in range(6)])]
    assert sum(i.ok for i in items) == 3
    assert sum(isinstance(i.error, clipnormals.BadRequestError) for i in items) == 2
    assert api.charged == 3
    assert 402 not in api.statuses


async def test_single_probe_until_the_balance_is_known() -> None:
    api = FakeAPI(credits=100, latency=lambda: 5.0)
    async with _client(api) as client:
        items = [i async for i in client.map([prepared()] * 10)]
    assert all(i.ok for i in items)
    first_done = api.arrivals[0] + 5.0
    assert all(t >= first_done for t in api.arrivals[1:])
    assert api.max_in_flight > 1  # once known, requests overlap


async def test_server_that_never_reports_the_balance() -> None:
    api = FakeAPI(credits=100, report_balance=False, latency=lambda: 5.0)
    async with _client(api, credits=clipnormals.CreditPolicy(budget=6)) as client:
        items = [i async for i in client.map([prepared()] * 10)]
    assert sum(i.ok for i in items) == 6
    assert client.credits.remaining is None
    assert api.max_in_flight > 1


async def test_calls_costing_more_than_one_credit() -> None:
    api = FakeAPI(credits=9, cost=2)
    async with _client(api, max_concurrency=4) as client:
        items = [i async for i in client.map([prepared()] * 10)]
    assert sum(i.ok for i in items) == 4
    assert client.credits.consumed == 8
    assert 402 not in api.statuses


def _charged(remaining: int) -> dict[str, str]:
    return {"x-credits-consumed": "1", "x-remaining-credits": str(remaining)}


def test_stale_balance_from_a_slow_response_is_not_believed() -> None:
    ledger = CreditLedger(clipnormals.CreditPolicy())
    ledger.remaining = 10
    ledger.reserved = 3  # three requests in flight
    r1 = clipnormals._core.credits.Reservation(ledger, 1, probe=False)
    r2 = clipnormals._core.credits.Reservation(ledger, 1, probe=False)
    r3 = clipnormals._core.credits.Reservation(ledger, 1, probe=False)
    r1.answered(200, _charged(7))  # the server had charged all three when this answered
    assert ledger.remaining == 7
    r2.answered(200, _charged(9))  # an older answer arriving late: not believed
    assert ledger.remaining == 7
    r3.answered(200, _charged(50))  # far above anything reordering explains: a top-up
    assert ledger.remaining == 50
    assert ledger.reserved == 0
    assert ledger.consumed == 3


@pytest.mark.parametrize(
    ("raw", "value"),
    [("42", 42), (" 7 ", 7), ("3.0", 3), ("-1", None), ("1.5", None), ("lots", None), (None, None)],
)
def test_credit_header_parsing(raw: str | None, value: int | None) -> None:
    headers = {} if raw is None else {"x-remaining-credits": raw}
    assert parse_credit_header(headers, "x-remaining-credits") == value


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="reserve"):
        clipnormals.CreditPolicy(reserve=-1)
    with pytest.raises(ValueError, match="budget"):
        clipnormals.CreditPolicy(budget=-5)


# -- charged answers whose body is lost ------------------------------------------------------


def _truncating_emulator(credits: int, *, seed: int) -> clipnormals.emulator.Emulator:
    from clipnormals.emulator import Emulator, EmulatorConfig, Faults

    return Emulator(
        EmulatorConfig(
            keys={KEY: credits},
            faults=Faults(truncate_jpeg=0.3),  # complete 200s carrying half a JPEG: charged
            synth="canned",
            seed=seed,
        )
    )


def _emulated(emulator: clipnormals.emulator.Emulator, **kwargs: object) -> clipnormals.AsyncClient:
    options: dict[str, object] = {
        "api_key": KEY,
        "base_url": "http://127.0.0.1",
        "transport": emulator.transport(),
        "rate_limit": clipnormals.RateLimit(requests=6000, per=60.0),
        "retry": clipnormals.RetryPolicy(attempts=20, initial=0.01, max_backoff=0.05),
    }
    options.update(kwargs)
    return clipnormals.AsyncClient(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_budget_caps_what_the_server_charges_truncated_bodies_included(seed: int) -> None:
    emulator = _truncating_emulator(1000, seed=seed)
    policy = clipnormals.CreditPolicy(budget=12)
    async with _emulated(emulator, credits=policy) as client:
        items = [i async for i in client.map([prepared(i) for i in range(30)])]
    charged = emulator.stats.credits_charged
    assert emulator.stats.faults.get("truncate-jpeg", 0) > 0  # the fault did happen
    assert charged <= 12  # a hard cap on what the server charges
    assert client.credits.consumed == charged
    done = sum(i.ok for i in items)
    assert done + emulator.stats.faults.get("truncate-jpeg", 0) == charged
    assert client.credits.reserved == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_balance_with_truncated_bodies_never_402s(seed: int) -> None:
    emulator = _truncating_emulator(15, seed=seed)
    async with _emulated(emulator) as client:
        items = [i async for i in client.map([prepared(i) for i in range(30)])]
    assert emulator.stats.statuses.get(402, 0) == 0
    assert emulator.stats.credits_charged == 15  # every credit used, not one asked for beyond
    assert client.credits.consumed == 15
    assert client.credits.remaining == 0
    failed = [i.error for i in items if not i.ok]
    assert all(isinstance(e, clipnormals.CreditBudgetError) for e in failed)
    assert sum(i.ok for i in items) == 15 - emulator.stats.faults.get("truncate-jpeg", 0)


def _slow_body_api(charged: list[int]) -> httpx.MockTransport:
    """Answers 200 with credit headers at once, then a body that takes 10 s to arrive."""

    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            await anyio.sleep(1.0)
            yield b"\xff" * 10

    async def handle(request: httpx.Request) -> httpx.Response:
        await request.aread()
        charged.append(1)
        return httpx.Response(
            200,
            headers={
                "content-type": "image/jpeg",
                "x-credits-consumed": "1",
                "x-remaining-credits": str(100 - len(charged)),
            },
            content=body(),
        )

    return httpx.MockTransport(handle)


async def test_an_answer_cancelled_after_its_headers_is_counted() -> None:
    charged: list[int] = []
    async with clipnormals.AsyncClient(
        api_key=KEY, transport=_slow_body_api(charged), rate_limit=clipnormals.RateLimit()
    ) as client:
        with anyio.move_on_after(3.0):  # a web client that went away mid-body
            await client.surface_normals(prepared())
        assert charged == [1]
        assert client.credits.consumed == 1
        assert client.credits.remaining == 99
        assert client.credits.reserved == 0


async def test_a_retry_of_a_charged_attempt_needs_room_in_the_budget() -> None:
    # Every answer is a charged 200 whose body is cut short: each retry costs a credit.
    api = FakeAPI(credits=None)
    truncated = httpx.Response(
        200,
        content=b"\xff\xd8\xff\xe0" + b"\0" * 20,
        headers={"content-type": "image/jpeg", "x-credits-consumed": "1"},
    )
    api.script = [truncated] * 50
    async with _client(api, credits=clipnormals.CreditPolicy(budget=3)) as client:
        with pytest.raises(clipnormals.CreditBudgetError):
            await client.surface_normals(prepared())
    assert len(api.arrivals) == 3
    assert client.credits.consumed == 3


async def test_an_unanswered_request_counts_against_the_budget() -> None:
    # The server may have charged a request whose answer never came; the budget must assume
    # it did.
    api = FakeAPI(credits=None, script=[httpx.ReadTimeout("no answer")] * 2)
    async with _client(api, credits=clipnormals.CreditPolicy(budget=2)) as client:
        with pytest.raises(clipnormals.CreditBudgetError):
            await client.surface_normals(prepared())
        assert client.credits.uncertain == 2
        assert client.credits.consumed == 0
    assert len(api.arrivals) == 2


async def test_a_request_that_never_connected_costs_nothing() -> None:
    api = FakeAPI(script=[httpx.ConnectError("refused")] * 2)
    async with _client(api, credits=clipnormals.CreditPolicy(budget=1)) as client:
        nm = await client.surface_normals(prepared())
    assert nm.credits_consumed == 1
    assert client.credits.uncertain == 0
    assert client.credits.consumed == 1


async def test_the_cost_of_a_call_is_learned_from_the_balance_when_not_reported() -> None:
    # An older API version: x-remaining-credits only, and each call costs 2.
    api = FakeAPI(credits=100, cost=2, report_cost=False)
    async with _client(api, credits=clipnormals.CreditPolicy(budget=6)) as client:
        items = [i async for i in client.map([prepared(i % 3) for i in range(10)])]
    assert api.charged <= 6  # the budget caps what the server charged
    assert client.credits.consumed == api.charged
    assert client.credits.unit == 2
    assert sum(i.ok for i in items) == api.charged // 2


@pytest.mark.parametrize("raw", ["1e9", "99999999999999999999", "50000"])
def test_a_call_costing_beyond_belief_is_not_believed(raw: str) -> None:
    assert parse_credit_header({"x-credits-consumed": raw}, "x-credits-consumed") is None
    assert parse_credit_header({"x-remaining-credits": "50000"}, "x-remaining-credits") == 50000
