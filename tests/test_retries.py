"""Retries keep their bounds: Retry-After honoured on every retried error, 429s that do not use up
attempts, and deadlines that hold against a server that trickles its answer."""

from __future__ import annotations

import itertools
import random
import socket
import threading
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest

import clipnormals

from .fakeapi import KEY, FakeAPI, error, prepared

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(virtual_time_backend: object) -> object:
    return virtual_time_backend


def _client(api: FakeAPI, **kwargs: object) -> clipnormals.AsyncClient:
    options: dict[str, object] = {
        "api_key": KEY,
        "transport": api.transport(),
        "rate_limit": clipnormals.RateLimit(requests=6000, per=60.0),
    }
    options.update(kwargs)
    return clipnormals.AsyncClient(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_retry_after_on_a_server_error_is_honoured(status: int) -> None:
    api = FakeAPI(script=[error(status, "busy", **{"retry-after": "3"})])
    async with _client(api) as client:
        await client.surface_normals(prepared())
    first, second = api.arrivals
    assert 3.0 <= second - first < 3.1


async def test_retry_after_on_a_server_error_is_capped() -> None:
    api = FakeAPI(script=[error(503, "come back tomorrow", **{"retry-after": "86400"})])
    policy = clipnormals.RetryPolicy(max_retry_after=5.0)
    async with _client(api, retry=policy) as client:
        await client.surface_normals(prepared())
    first, second = api.arrivals
    assert 5.0 <= second - first < 5.1


async def test_a_retry_after_beyond_the_total_gives_up_at_once() -> None:
    api = FakeAPI(script=[error(503, "later", **{"retry-after": "100"})])
    policy = clipnormals.RetryPolicy(total=30.0)
    async with _client(api, retry=policy) as client:
        with pytest.raises(clipnormals.ServerError) as info:
            await client.surface_normals(prepared())
    assert info.value.retry_after == 100.0
    assert len(api.arrivals) == 1


async def test_a_429_storm_uses_no_attempts() -> None:
    storm = [error(429, "slow down", **{"retry-after": "1"}) for _ in range(20)]
    api = FakeAPI(script=storm)
    async with _client(api, max_concurrency=2) as client:
        items = [i async for i in client.map([prepared(i) for i in range(2)])]
    assert [i.ok for i in items] == [True, True]
    assert api.statuses.count(429) == 20
    assert client.stats.rate_limited == 20


async def test_real_errors_still_use_up_the_attempts() -> None:
    api = FakeAPI(script=[error(500, "boom")] * 10)
    async with _client(api, retry=clipnormals.RetryPolicy(attempts=3, initial=0.01)) as client:
        with pytest.raises(clipnormals.ServerError):
            await client.surface_normals(prepared())
    assert len(api.arrivals) == 3


async def test_429s_mixed_with_errors_count_only_the_errors() -> None:
    limited = error(429, "slow down", **{"retry-after": "0.5"})
    api = FakeAPI(script=[limited, error(500, "a"), limited, limited, error(502, "b")])
    policy = clipnormals.RetryPolicy(attempts=3, initial=0.01)
    async with _client(api, retry=policy) as client:
        await client.surface_normals(prepared())  # 2 errors < 3 attempts: it gets through
    assert len(api.arrivals) == 6


async def test_429s_are_bounded_by_the_total_time() -> None:
    api = FakeAPI(script=[error(429, "slow down", **{"retry-after": "10"})] * 100)
    policy = clipnormals.RetryPolicy(total=60.0)
    async with _client(api, retry=policy) as client:
        started = anyio.current_time()
        with pytest.raises(clipnormals.RateLimitError):
            await client.surface_normals(prepared())
        assert anyio.current_time() - started <= 61.0
    assert 5 <= len(api.arrivals) <= 7


async def test_an_attempt_deadline_bounds_a_slow_answer_in_process() -> None:
    async def handle(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(1000)
        raise AssertionError("unreachable")

    policy = clipnormals.RetryPolicy(attempt_timeout=5.0, attempts=2, initial=0.01)
    async with clipnormals.AsyncClient(
        api_key=KEY, transport=httpx.MockTransport(handle), retry=policy
    ) as client:
        started = anyio.current_time()
        with pytest.raises(clipnormals.APITimeoutError, match="deadline"):
            await client.surface_normals(prepared())
        assert 10.0 <= anyio.current_time() - started < 10.5  # two attempts of 5 s
        assert client.credits.uncertain == 2  # sent, never answered: maybe charged


# -- a real server on loopback that trickles its body ------------------------------------------


@pytest.fixture
def trickling_server() -> Iterator[str]:
    """Headers at once, then one body byte every 0.25 s, for a minute at most."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(
                next(
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
            )
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: image/jpeg\r\ncontent-length: 100000\r\n"
                b"x-credits-consumed: 1\r\n\r\n"
            )
            for _ in range(240):
                if stop.is_set():
                    return
                try:
                    conn.sendall(b"\xff")
                except OSError:
                    return
                time.sleep(0.25)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.loopback
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_total_bounds_a_trickling_body_on_a_real_socket(trickling_server: str) -> None:
    policy = clipnormals.RetryPolicy(total=2.0)
    async with clipnormals.AsyncClient(
        api_key=KEY, base_url=trickling_server, timeout=1.0, retry=policy
    ) as client:
        started = time.monotonic()
        with pytest.raises(clipnormals.APITimeoutError):
            await client.surface_normals(prepared())
        elapsed = time.monotonic() - started
        # The per-read timeout (1 s) never fires: a byte comes every 0.25 s. Only the
        # deadline ends it, 2 s after the first attempt started (generous for a busy host).
        assert elapsed < 6.0
        assert client.credits.consumed == 1  # the headers said it was charged


@pytest.mark.loopback
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_attempt_timeout_bounds_each_attempt_on_a_real_socket(trickling_server: str) -> None:
    policy = clipnormals.RetryPolicy(attempt_timeout=1.0, attempts=2, initial=0.01, total=60)
    async with clipnormals.AsyncClient(
        api_key=KEY, base_url=trickling_server, timeout=5.0, retry=policy
    ) as client:
        started = time.monotonic()
        with pytest.raises(clipnormals.APITimeoutError):
            await client.surface_normals(prepared())
        assert time.monotonic() - started < 6.0
        assert client.credits.consumed == 2


async def test_one_cap_bounds_the_pause_a_429_imposes() -> None:
    # RetryPolicy.max_retry_after is the one cap, on 429s (a shared pause) as on other errors.
    api = FakeAPI(script=[error(429, "later", **{"retry-after": "3600"})])
    async with _client(api, retry=clipnormals.RetryPolicy(max_retry_after=7.0)) as client:
        await client.surface_normals(prepared())
    first, second = api.arrivals
    assert 7.0 <= second - first < 7.5


# -- the policy's rules, one at a time --------------------------------------------------------


def _errors() -> dict[str, BaseException]:
    return {
        "429": clipnormals.RateLimitError("429", status_code=429),
        "503": clipnormals.ServerError("503", status_code=503),
        "connection": clipnormals.APIConnectionError("reset"),
        "timeout": clipnormals.APITimeoutError("slow"),
        "circuit": clipnormals.CircuitOpenError("open", host="h"),
        "400": clipnormals.BadRequestError("400", status_code=400),
        "402": clipnormals.InsufficientCreditsError("402", status_code=402),
        "403": clipnormals.PermissionDeniedError("403", status_code=403),
        "406": clipnormals.NotAcceptableError("406", status_code=406),
        "404": clipnormals.UnexpectedResponseError("404", status_code=404),
        "budget": clipnormals.CreditBudgetError("budget"),
    }


@pytest.mark.parametrize(
    ("flags", "retried"),
    [
        ({}, {"429", "503", "connection", "timeout"}),
        ({"retry_rate_limited": False}, {"503", "connection", "timeout"}),
        ({"retry_server_errors": False}, {"429", "connection", "timeout"}),
        ({"retry_connection_errors": False}, {"429", "503"}),
    ],
)
def test_what_is_retried_follows_each_flag(flags: dict[str, bool], retried: set[str]) -> None:
    policy = clipnormals.RetryPolicy(**flags)
    assert {name for name, exc in _errors().items() if policy.is_retryable(exc)} == retried


class _Top(random.Random):
    """Draws the top of every range: the backoff window itself."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_windows_start_at_initial_double_and_stop_at_the_cap() -> None:
    policy = clipnormals.RetryPolicy(initial=0.5, max_backoff=3.0)
    windows = [policy.backoff(n, rng=_Top()) for n in range(1, 7)]
    assert windows == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    draws = [policy.backoff(3, rng=random.Random(n)) for n in range(200)]
    assert 0.0 <= min(draws) < 0.2 < 1.8 < max(draws) <= 2.0  # full jitter: all of [0, window]


def test_the_pause_after_a_429_grows_with_the_streak_and_is_never_near_zero() -> None:
    policy = clipnormals.RetryPolicy(initial=0.5, max_backoff=3.0)
    for streak, window in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)]:
        pauses = [policy.rate_limit_pause(streak, None) for _ in range(200)]
        assert window / 2 <= min(pauses), streak
        assert max(pauses) <= window, streak
    assert policy.rate_limit_pause(1, 7.0) == 7.0  # the server's word wins...
    assert policy.rate_limit_pause(1, 500.0) == policy.max_retry_after  # ...capped
    assert policy.rate_limit_pause(1, -2.0) == 0.0


def test_attempt_deadlines_never_pass_the_total() -> None:
    policy = clipnormals.RetryPolicy(attempt_timeout=30.0, total=100.0)
    assert policy.attempt_deadline(started=0.0, now=10.0) == 30.0
    assert policy.attempt_deadline(started=0.0, now=85.0) == 15.0
    assert policy.attempt_deadline(started=0.0, now=120.0) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"circuit_failures": -1},
        {"initial": -0.1},
        {"max_backoff": float("nan")},
        {"total": -1.0},
        {"attempt_timeout": 0.0},
    ],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="RetryPolicy"):
        clipnormals.RetryPolicy(**kwargs)  # type: ignore[arg-type]


async def test_the_429_streak_starts_again_after_a_success() -> None:
    # Pauses without Retry-After grow with consecutive 429s (windows 1, 2, 4 s)... and after a
    # success the next 429 pauses like a first one again (half to all of 1 s), not 8 s.
    limited = error(429, "slow down")
    api = FakeAPI(script=[limited, limited, limited, None, limited])
    policy = clipnormals.RetryPolicy(initial=1.0, max_backoff=64.0)
    async with _client(api, retry=policy, max_concurrency=1) as client:
        await client.surface_normals(prepared(1))  # three 429s, then a success
        await client.surface_normals(prepared(2))  # one 429, then a success
    gaps = [b - a for a, b in itertools.pairwise(api.arrivals)]
    assert len(gaps) == 5
    assert 0.5 <= gaps[0] <= 1.1  # windows of 1, 2 and 4 s: half to all of each
    assert 1.0 <= gaps[1] <= 2.1
    assert 2.0 <= gaps[2] <= 4.1
    assert 0.5 <= gaps[4] <= 1.1, gaps


async def test_a_402_tells_the_ledger_the_balance_is_zero() -> None:
    api = FakeAPI(script=[error(402, "no credits left")])  # no balance header on the 402
    async with _client(api) as client:
        with pytest.raises(clipnormals.InsufficientCreditsError):
            await client.surface_normals(prepared())
        assert client.credits.remaining == 0
        assert client.halted


async def test_the_retry_loop_is_built_only_after_a_failed_first_attempt_and_decides_as_before(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    built: list[int] = []
    real_retrying = clipnormals.RetryPolicy.retrying

    def counting_retrying(self: clipnormals.RetryPolicy, **kwargs: object) -> object:
        built.append(1)
        return real_retrying(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(clipnormals.RetryPolicy, "retrying", counting_retrying)
    caplog.set_level("INFO", logger="clipnormals")

    api = FakeAPI()
    async with _client(api) as client:
        async for item in client.map([prepared(seed=i) for i in range(3)]):
            assert item.ok
            assert item.attempts == 1
    assert built == []  # three first attempts that succeeded: no retry loop at all

    # A retried failure: the replayed first attempt is waited for and counted as before.
    api = FakeAPI(script=[error(503, "busy", **{"retry-after": "3"})])
    async with _client(api) as client:
        nm = await client.surface_normals(prepared())
    first, second = api.arrivals
    assert 3.0 <= second - first < 3.1
    assert nm.credits_remaining is not None
    assert built == [1]
    assert any("attempt 1 failed" in r.getMessage() for r in caplog.records)

    # Not retryable: raised as it came, one request, no second attempt.
    api = FakeAPI(script=[error(400, "bad input")])
    async with _client(api) as client:
        with pytest.raises(clipnormals.BadRequestError, match="bad input"):
            await client.surface_normals(prepared())
    assert len(api.arrivals) == 1

    # Out of attempts: the last error, after exactly ``attempts`` requests.
    api = FakeAPI(script=[error(502, "down")] * 5)
    policy = clipnormals.RetryPolicy(attempts=2, initial=0.5)
    async with _client(api, retry=policy) as client:
        with pytest.raises(clipnormals.ServerError, match="down"):
            await client.surface_normals(prepared())
    assert len(api.arrivals) == 2


@pytest.mark.parametrize("seed", range(5))
async def test_a_429_storm_without_retry_after_ends_within_the_total(seed: int) -> None:
    # Pauses without Retry-After grow with the storm (up to max_backoff, jittered). Before, a
    # retry waited out a whole pause even when it ended past the image's total: with total=60,
    # images failed after up to 112 s.
    random.seed(seed)
    api = FakeAPI(script=[error(429, "slow down")] * 400)
    policy = clipnormals.RetryPolicy(total=60.0, initial=2.0, max_backoff=30.0)
    async with _client(api, retry=policy) as client:
        started = anyio.current_time()  # a fresh limiter: the first attempt starts at once
        with pytest.raises(clipnormals.RateLimitError):
            await client.surface_normals(prepared())
        took = anyio.current_time() - started
    assert policy.total - 1.0 <= took <= policy.total + 0.5, took
