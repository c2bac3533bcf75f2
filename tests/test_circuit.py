"""A server that cannot be reached fails fast: a client that never connected gives up in seconds,
and a run of connection failures opens a circuit for the whole client."""

from __future__ import annotations

import socket
import time

import anyio
import httpx
import pytest

import clipnormals

from .fakeapi import KEY, FakeAPI, error, prepared

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(virtual_time_backend: object) -> object:
    return virtual_time_backend


def _refused() -> httpx.ConnectError:
    return httpx.ConnectError("[Errno 111] Connection refused")


def _client(api: FakeAPI, **kwargs: object) -> clipnormals.AsyncClient:
    options: dict[str, object] = {
        "api_key": KEY,
        "transport": api.transport(),
        "rate_limit": clipnormals.RateLimit(requests=6000, per=60.0),
    }
    options.update(kwargs)
    return clipnormals.AsyncClient(**options)  # type: ignore[arg-type]


async def test_a_client_that_never_connected_gives_up_after_three_tries() -> None:
    api = FakeAPI(script=[_refused()] * 100)
    async with _client(api) as client:
        started = anyio.current_time()
        with pytest.raises(clipnormals.APIConnectionError, match="could not be reached"):
            await client.surface_normals(prepared())
        assert anyio.current_time() - started < 2.0  # backoff windows 0.5 s and 1 s
        assert len(api.arrivals) == 3
        with pytest.raises(clipnormals.CircuitOpenError) as info:
            await client.surface_normals(prepared())
        assert info.value.host == "clipdrop-api.co"
        assert len(api.arrivals) == 3  # failed without I/O


async def test_many_images_do_not_each_use_up_their_retries() -> None:
    api = FakeAPI(script=[_refused()] * 1000)
    async with _client(api) as client:
        items = [i async for i in client.map([prepared(i % 3) for i in range(31)])]
    assert not any(i.ok for i in items)
    assert all(isinstance(i.error, clipnormals.APIConnectionError) for i in items)
    assert sum(isinstance(i.error, clipnormals.CircuitOpenError) for i in items) >= 20
    assert len(api.arrivals) <= 16 + 3  # what was in flight when it opened, at most


async def test_the_circuit_lets_one_probe_through_after_the_reset_time() -> None:
    api = FakeAPI(script=[_refused()] * 3)  # then the server is back
    policy = clipnormals.RetryPolicy(circuit_reset=30.0)
    async with _client(api, retry=policy) as client:
        with pytest.raises(clipnormals.APIConnectionError):
            await client.surface_normals(prepared())
        with pytest.raises(clipnormals.CircuitOpenError):
            await client.surface_normals(prepared())
        await anyio.sleep(30.0)
        nm = await client.surface_normals(prepared())  # the probe: closes the circuit
        assert nm.credits_consumed == 1
        await client.surface_normals(prepared())
    assert len(api.arrivals) == 5


async def test_a_failed_probe_opens_the_circuit_again() -> None:
    api = FakeAPI(script=[_refused()] * 4)
    policy = clipnormals.RetryPolicy(circuit_reset=10.0)
    async with _client(api, retry=policy) as client:
        with pytest.raises(clipnormals.APIConnectionError):
            await client.surface_normals(prepared())
        await anyio.sleep(10.0)
        with pytest.raises(clipnormals.APIConnectionError):
            await client.surface_normals(prepared())  # the probe fails, then open again
        with pytest.raises(clipnormals.CircuitOpenError):
            await client.surface_normals(prepared())
        assert len(api.arrivals) == 4


async def test_a_client_that_connected_tolerates_a_few_failures() -> None:
    # Once the server has answered, it takes five failures in a row to open the circuit;
    # any answer, even an error status, resets the run.
    api = FakeAPI(script=[None, _refused(), _refused(), error(503, "x"), _refused(), _refused()])
    async with _client(api, retry=clipnormals.RetryPolicy(initial=0.01)) as client:
        await client.surface_normals(prepared())
        await client.surface_normals(prepared())  # 2 failures, a 503, 2 failures, then ok
    assert len(api.arrivals) == 7


async def test_the_circuit_breaker_can_be_turned_off() -> None:
    api = FakeAPI(script=[_refused()] * 100)
    policy = clipnormals.RetryPolicy(circuit_failures=0, attempts=6, initial=0.01)
    async with _client(api, retry=policy) as client:
        with pytest.raises(clipnormals.APIConnectionError) as info:
            await client.surface_normals(prepared())
    assert not isinstance(info.value, clipnormals.CircuitOpenError)
    assert len(api.arrivals) == 6


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there


@pytest.mark.loopback
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_nothing_listening_fails_in_seconds_on_a_real_socket() -> None:
    url = f"http://127.0.0.1:{_dead_port()}"
    async with clipnormals.AsyncClient(api_key=KEY, base_url=url) as client:
        started = time.monotonic()
        with pytest.raises(clipnormals.APIConnectionError, match=r"127\.0\.0\.1:\d+") as info:
            await client.surface_normals(prepared())
        one = time.monotonic() - started
        items = [i async for i in client.map([prepared(i % 3) for i in range(31)])]
        everything = time.monotonic() - started
    assert "refused" in info.value.message.lower()
    assert one < 10.0  # about 1.5 s at most by the backoff; generous for a busy machine
    assert everything < 15.0
    assert all(isinstance(i.error, clipnormals.CircuitOpenError) for i in items)


async def test_a_gateway_failing_everything_opens_the_circuit_after_twenty() -> None:
    api = FakeAPI(script=[error(502, "bad gateway")] * 1000)
    policy = clipnormals.RetryPolicy(initial=0.01, max_backoff=0.05)
    async with _client(api, retry=policy) as client:
        items = [i async for i in client.map([prepared(i % 3) for i in range(40)])]
        assert sum(isinstance(i.error, clipnormals.CircuitOpenError) for i in items) >= 30
        assert "502" in str(items[-1].error) or "answer" in str(items[-1].error)
    assert 20 <= len(api.arrivals) <= 20 + 16  # the run, and what was in flight


async def test_resets_after_connecting_count_as_failed_answers() -> None:
    reset = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    api = FakeAPI(script=[reset] * 1000)
    policy = clipnormals.RetryPolicy(initial=0.01, max_backoff=0.05)
    errors: list[clipnormals.ClipnormalsError] = []
    async with _client(api, retry=policy) as client:
        for i in range(5):
            try:
                await client.surface_normals(prepared(i))
            except clipnormals.ClipnormalsError as exc:
                errors.append(exc)
    # Two images use up their 8 attempts; the third opens the circuit on its 4th (20 in a
    # row); the last two are refused without a request.
    assert [type(e).__name__ for e in errors] == ["APIConnectionError"] * 2 + [
        "CircuitOpenError"
    ] * 3
    assert "not answering" in errors[2].message
    assert len(api.arrivals) == 20


async def test_occasional_failed_answers_never_open_it() -> None:
    # One failed answer in two, for a long time: never twenty in a row, never open.
    script: list[httpx.Response | Exception | None] = [error(503, "busy"), None] * 60
    api = FakeAPI(script=script)
    async with _client(api, retry=clipnormals.RetryPolicy(initial=0.01)) as client:
        for i in range(60):
            await client.surface_normals(prepared(i % 3))
    assert client.stats.successes == 60


class _Restart:
    """A server that answers, is down for ``down`` seconds from its ``after``-th request (every
    connection refused), then answers again."""

    def __init__(self, api: FakeAPI, after: int, down: float) -> None:
        self.api, self.after, self.down = api, after, down
        self.down_from: float | None = None
        self.refused = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        now = anyio.current_time()
        if self.down_from is None and len(self.api.arrivals) >= self.after:
            self.down_from = now
        if self.down_from is not None and now < self.down_from + self.down:
            self.refused += 1
            raise _refused()
        return await self.api.handle(request)


@pytest.mark.parametrize("down", [2.0, 45.0])
async def test_a_restart_of_a_server_that_answered_loses_no_image(down: float) -> None:
    # Before: the circuit opened and every image queued behind it failed at once, though the
    # server was back two seconds later. Now they wait for the probe (one circuit_reset).
    api = FakeAPI()
    server = _Restart(api, after=10, down=down)
    policy = clipnormals.RetryPolicy(initial=0.01, max_backoff=0.05)
    async with clipnormals.AsyncClient(
        api_key=KEY,
        transport=httpx.MockTransport(server.handle),
        rate_limit=clipnormals.RateLimit(requests=6000, per=60.0),
        retry=policy,
        max_concurrency=4,
    ) as client:
        items = [i async for i in client.map([prepared(i % 3) for i in range(60)])]
    errors = [i.error for i in items if not i.ok]
    assert server.refused >= policy.circuit_failures  # the circuit did open
    if down < policy.circuit_reset:
        assert errors == []  # the first probe found it back: nothing lost
        assert len(api.accepted) == 60
    else:
        # Still down when the probe went: final, every image left fails at once.
        assert errors
        assert all(isinstance(e, clipnormals.CircuitOpenError) for e in errors)
        assert all(
            e.retry_in is None for e in errors if isinstance(e, clipnormals.CircuitOpenError)
        )
        assert server.refused <= policy.circuit_failures + 4 + 1  # in flight, and the probe


async def test_a_server_never_reached_still_fails_at_once() -> None:
    api = FakeAPI(script=[_refused()] * 100)
    async with _client(api) as client:
        started = anyio.current_time()
        items = [i async for i in client.map([prepared(i % 3) for i in range(20)])]
        assert anyio.current_time() - started < 5.0  # never a circuit_reset's wait
    assert all(isinstance(i.error, clipnormals.APIConnectionError) for i in items)
    assert all(getattr(i.error, "retry_in", None) is None for i in items)
