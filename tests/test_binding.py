"""A client belongs to one event loop and one process, and says so before any I/O; the blocking
``Client`` behaves like ``AsyncClient`` in every way a caller can see."""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import select
import signal
import warnings
from collections.abc import Callable, Iterator

import pytest

import clipnormals
from clipnormals.emulator import EmulatorConfig, RunningServer, start_in_thread

from .fakeapi import KEY, prepared

pytestmark = pytest.mark.loopback


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with start_in_thread(EmulatorConfig(keys={KEY: 10_000})) as running:
        yield running


def _requests(server: RunningServer) -> int:
    return server.emulator.stats.requests


# The first loop ends with the client's keep-alive connection open: the caller's pattern leaks
# that socket (asyncio warns when it is collected), whatever the client does.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_second_event_loop_is_refused_before_any_io(server: RunningServer) -> None:
    client = clipnormals.AsyncClient(api_key=KEY, base_url=server.url)
    asyncio.run(client.surface_normals(prepared()))
    sent = _requests(server)
    with pytest.raises(clipnormals.ClientClosedError, match="event loop"):
        asyncio.run(client.surface_normals(prepared()))
    assert _requests(server) == sent  # nothing was uploaded
    asyncio.run(client.aclose())  # closing from a later loop is allowed and quiet
    del client
    gc.collect()  # the leaked socket's warning belongs to this test


def test_a_client_made_outside_any_loop_binds_to_its_first(server: RunningServer) -> None:
    async def twice(client: clipnormals.AsyncClient) -> None:
        async with client:
            await client.surface_normals(prepared())
            await client.surface_normals(prepared())

    asyncio.run(twice(clipnormals.AsyncClient(api_key=KEY, base_url=server.url)))


def _in_child(work: Callable[[], str]) -> str:
    """Run ``work`` in a forked child; return what it reported (or why it did not)."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Forking a process with threads is exactly what is under test here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's cleanup
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


def test_a_blocking_client_in_a_forked_child_fails_at_once(server: RunningServer) -> None:
    with clipnormals.Client(api_key=KEY, base_url=server.url) as client:
        client.surface_normals(prepared())
        sent = _requests(server)

        def child() -> str:
            client.surface_normals(prepared())
            return "sent"

        report = _in_child(child)
        assert report.startswith("ClientClosedError"), report
        assert "fork" in report
        assert _requests(server) == sent
        client.surface_normals(prepared())  # the parent's client still works


def test_an_async_client_in_a_forked_child_fails_at_once(server: RunningServer) -> None:
    async def main() -> None:
        async with clipnormals.AsyncClient(api_key=KEY, base_url=server.url) as client:
            await client.surface_normals(prepared())

            def child() -> str:
                asyncio.run(client.surface_normals(prepared()))
                return "sent"

            report = _in_child(child)
            assert report.startswith("ClientClosedError"), report
            assert "fork" in report

    asyncio.run(main())


def test_the_blocking_client_raises_what_the_async_one_raises_after_close(
    server: RunningServer,
) -> None:
    with clipnormals.Client(api_key=KEY, base_url=server.url) as client:
        pass
    with pytest.raises(clipnormals.ClientClosedError):
        client.surface_normals(prepared())
    with pytest.raises(clipnormals.ClientClosedError):
        next(iter(client.map([prepared()])))
    client.close()  # idempotent


def test_the_blocking_client_takes_exactly_the_async_clients_arguments() -> None:
    blocking = inspect.signature(clipnormals.Client).parameters
    async_ = inspect.signature(clipnormals.AsyncClient).parameters
    assert list(blocking) == list(async_)
    for name, parameter in async_.items():
        assert blocking[name].kind is parameter.kind, name
        assert blocking[name].default == parameter.default, name
        assert blocking[name].annotation == parameter.annotation, name


def test_a_misspelt_argument_fails_at_once() -> None:
    with pytest.raises(TypeError, match="max_concurency"):
        clipnormals.Client(api_key=KEY, max_concurency=4)  # type: ignore[call-arg]


def test_repr_of_a_half_built_client_does_not_raise() -> None:
    client = clipnormals.Client.__new__(clipnormals.Client)
    assert "Client" in repr(client)
    with pytest.raises(ValueError, match="max_concurrency"):
        clipnormals.Client(api_key=KEY, max_concurrency=0)


class _ClosingLimiter:
    """A limiter with connections of its own, as a Redis one has."""

    def __init__(self) -> None:
        self.closed = False
        self.inner = clipnormals.LocalLimiter(clipnormals.RateLimit())

    async def acquire(self) -> None:
        await self.inner.acquire()

    async def cooldown(self, seconds: float) -> None:
        await self.inner.cooldown(seconds)

    async def aclose(self) -> None:
        self.closed = True


def test_the_blocking_client_closes_the_limiter_it_was_given(server: RunningServer) -> None:
    limiter = _ClosingLimiter()
    with clipnormals.Client(api_key=KEY, base_url=server.url, limiter=limiter) as client:
        client.surface_normals(prepared())
    assert limiter.closed


def test_the_blocking_client_has_with_options_too(server: RunningServer) -> None:
    with clipnormals.Client(api_key=KEY, base_url=server.url) as client:
        quick = client.with_options(retry=clipnormals.RetryPolicy.disabled(), timeout=5.0)
        quick.surface_normals(prepared())
        assert quick.credits is client.credits
        quick.close()  # a view closes nothing
        client.surface_normals(prepared())
    with pytest.raises(clipnormals.ClientClosedError):
        quick.surface_normals(prepared())
