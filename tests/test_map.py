"""``client.map``: leaving early stops spending, the iteration owns its tasks, tags come back."""

from __future__ import annotations

import gc
import operator
import weakref
from pathlib import Path

import anyio
import numpy as np
import pytest

import clipnormals

from .fakeapi import KEY, FakeAPI, prepared

pytestmark = pytest.mark.anyio

FAST = clipnormals.RateLimit(requests=6000, per=60.0)


@pytest.fixture
def anyio_backend(virtual_time_backend: object) -> object:
    return virtual_time_backend


def _client(api: FakeAPI, **kwargs: object) -> clipnormals.AsyncClient:
    options: dict[str, object] = {
        "api_key": KEY,
        "transport": api.transport(),
        "rate_limit": FAST,
        "max_concurrency": 8,
    }
    options.update(kwargs)
    return clipnormals.AsyncClient(**options)  # type: ignore[arg-type]


async def test_break_from_a_bare_loop_starts_no_new_upload() -> None:
    api = FakeAPI(latency=lambda: 1.0, credits=None)
    async with _client(api) as client:  # a long-lived client: it stays open after the loop
        async for _item in client.map([prepared(i % 3) for i in range(50)]):
            started = len(api.arrivals)
            break
        await anyio.sleep(30)  # time for anything still running to finish and charge
        assert len(api.arrivals) == started
        assert api.charged <= started
        assert client.credits.reserved == 0
        assert len(client._session.maps) == 0


async def test_an_exception_in_the_loop_body_stops_the_uploads() -> None:
    api = FakeAPI(latency=lambda: 1.0, credits=None)
    started = -1

    async def consume(client: clipnormals.AsyncClient) -> None:
        nonlocal started
        async for _item in client.map([prepared(i % 3) for i in range(50)]):
            started = len(api.arrivals)
            raise LookupError("the consumer's own bug")

    async with _client(api) as client:
        with pytest.raises(LookupError):
            await consume(client)
        await anyio.sleep(30)
        assert len(api.arrivals) == started
        assert client.credits.reserved == 0


async def test_dropping_the_iterator_stops_the_uploads() -> None:
    api = FakeAPI(latency=lambda: 1.0, credits=None)
    async with _client(api) as client:
        items = client.map([prepared(i % 3) for i in range(50)])
        await items.__anext__()
        started = len(api.arrivals)
        alive = weakref.ref(items)
        del items
        assert alive() is None  # nothing else keeps an abandoned iteration alive
        await anyio.sleep(30)
        assert len(api.arrivals) == started
        assert client.credits.reserved == 0


async def test_async_with_stops_every_image_before_the_block_is_left() -> None:
    api = FakeAPI(latency=lambda: 1.0, credits=None)
    async with _client(api) as client:
        async with client.map([prepared(i % 3) for i in range(50)]) as items:
            await items.__anext__()
            await items.__anext__()
            assert 0 < items.in_flight <= 16
            started = len(api.arrivals)
        assert api.in_flight == 0  # already cancelled, not "soon"
        await anyio.sleep(30)
        assert len(api.arrivals) == started
        assert client.credits.reserved == 0


async def test_an_error_in_the_with_block_comes_out_unwrapped() -> None:
    api = FakeAPI(credits=None)

    async def consume(client: clipnormals.AsyncClient) -> None:
        async with client.map([prepared()] * 5) as items:
            await items.__anext__()
            raise LookupError("mine")

    async with _client(api) as client:
        with pytest.raises(LookupError, match="mine"):
            await consume(client)
        assert client.credits.reserved == 0


async def test_cancelling_the_closer_is_not_swallowed() -> None:
    api = FakeAPI(latency=lambda: 1.0, credits=None)
    async with _client(api) as client:
        items = client.map([prepared(i % 3) for i in range(50)])
        await items.__anext__()
        after_close = False
        with anyio.CancelScope() as scope:
            scope.cancel()
            await items.aclose()
            after_close = True  # the caller was cancelled: never reached
        assert scope.cancelled_caught
        assert not after_close
        started = len(api.arrivals)
        await anyio.sleep(30)
        assert len(api.arrivals) == started  # and the workers were stopped all the same


async def test_cancelling_the_task_that_owns_the_with_block_cancels_the_work() -> None:
    api = FakeAPI(latency=lambda: 1.0, credits=None)
    async with _client(api) as client:
        with anyio.move_on_after(2.5):
            async with client.map([prepared(i % 3) for i in range(50)]) as items:
                async for _item in items:
                    pass
        started = len(api.arrivals)
        assert api.in_flight == 0
        await anyio.sleep(30)
        assert len(api.arrivals) == started
        assert client.credits.reserved == 0


async def test_items_carry_the_callers_own_objects() -> None:
    api = FakeAPI(credits=None)
    jobs = [(f"job-{i}", prepared(i)) for i in range(6)]
    async with _client(api) as client, client.map(jobs, image=operator.itemgetter(1)) as items:
        seen = sorted([(item.source[0], item.ok) async for item in items])
    assert seen == [(f"job-{i}", True) for i in range(6)]


async def test_in_flight_counts_what_was_pulled_and_not_delivered() -> None:
    api = FakeAPI(credits=None)
    async with _client(api, max_concurrency=2) as client:
        async with client.map([prepared(i % 3) for i in range(10)], prefetch=1) as items:
            assert items.in_flight == 0
            first = await items.__anext__()
            assert first.ok
            await anyio.sleep(1)  # let the workers run ahead as far as they may
            assert items.in_flight == 3  # max_concurrency + prefetch, each holding one
            rest = [item async for item in items]
        assert len(rest) == 9
        assert items.delivered == 10
        assert items.in_flight == 0


async def test_a_failing_extractor_is_raised_bare() -> None:
    def broken(job: str) -> object:
        raise KeyError(job)

    async with _client(FakeAPI(credits=None)) as client:
        with pytest.raises(KeyError, match="x"):
            async for _item in client.map(["x", "y"], image=broken):  # type: ignore[arg-type]
                pass


async def test_closing_the_client_stops_open_iterations() -> None:
    api = FakeAPI(latency=lambda: 1.0, credits=None)
    client = _client(api)
    items = client.map([prepared(i % 3) for i in range(50)])
    await items.__anext__()
    await client.aclose()
    started = len(api.arrivals)
    await anyio.sleep(30)
    assert len(api.arrivals) == started
    gc.collect()


# -- stop_sending: the graceful half of a shutdown ---------------------------------------------


async def test_stop_sending_refuses_every_waiter_and_lets_the_sent_finish() -> None:
    api = FakeAPI(latency=lambda: 2.0, credits=None)
    slow = clipnormals.RateLimit(requests=60, per=60.0)  # a token a second: most images wait
    async with _client(api, rate_limit=slow, max_concurrency=4) as client:
        async with client.map([prepared(i % 3) for i in range(20)]) as items:
            first = await items.__anext__()  # about 3 s in: three sent, more waiting for tokens
            sent = len(api.arrivals)
            client.stop_sending()
            rest = [item async for item in items]
        outcomes = [first, *rest]
        ok = [i for i in outcomes if i.ok]
        stopped = [i for i in outcomes if isinstance(i.error, clipnormals.SendingStoppedError)]
        assert len(api.arrivals) == sent  # nothing started after the stop
        assert len(ok) == sent  # what was sent finished
        assert len(ok) + len(stopped) == 20
        assert all(i.attempts == 0 for i in stopped)
        assert client.credits.reserved == 0
        with pytest.raises(clipnormals.SendingStoppedError):
            await client.surface_normals(prepared())


async def test_stopping_a_view_stops_only_that_view() -> None:
    api = FakeAPI(credits=None)
    async with _client(api) as client:
        view = client.with_options()
        view.stop_sending()
        with pytest.raises(clipnormals.SendingStoppedError):
            await view.surface_normals(prepared())
        await client.surface_normals(prepared())  # the client itself still sends
        later = client.with_options()
        client.stop_sending()
        with pytest.raises(clipnormals.SendingStoppedError):
            await later.surface_normals(prepared())  # stopping a client stops its views
    assert len(api.arrivals) == 1


# -- uploads never run further ahead of the consumer than max_concurrency ---------------------


async def test_a_loop_left_over_a_named_iterator_sends_at_most_max_concurrency_more() -> None:
    # The iterator is still referenced after the loop, so nothing tells it the consumer left:
    # the bound on uploads ahead of the consumer (max_concurrency) is what limits the charges.
    api = FakeAPI(latency=lambda: 1.0, credits=None)
    async with _client(api, max_concurrency=16) as client:
        items = client.map([prepared(i % 3) for i in range(50)])  # 32 workers (prefetch 16)
        async for _item in items:
            break
        await anyio.sleep(60)  # the client stays open, the iterator alive
        assert 1 < len(api.arrivals) <= 1 + 16  # the one delivered, and 16 ahead of it
        assert api.charged == len(api.arrivals)
        await items.aclose()
        await anyio.sleep(60)
        assert api.charged <= 1 + 16
    assert client.credits.reserved == 0


async def test_a_slow_consumer_holds_the_uploads_back() -> None:
    api = FakeAPI(credits=None)
    images = [prepared(i % 3) for i in range(40)]
    async with _client(api, max_concurrency=4) as client, client.map(images, prefetch=8) as items:
        await items.__anext__()
        await anyio.sleep(30)  # a consumer busy with the first item
        assert len(api.arrivals) <= 1 + 4  # delivered + max_concurrency ahead of it
        rest = [item async for item in items]
    assert len(rest) == 39
    assert all(item.ok for item in rest)


def test_the_blocking_map_left_early_through_a_named_generator_stops_too() -> None:
    api = FakeAPI(latency=lambda: 0.2, credits=None)
    with clipnormals.Client(
        api_key=KEY, transport=api.transport(), rate_limit=FAST, max_concurrency=4
    ) as client:
        items = client.map([prepared(i % 3) for i in range(50)])
        for _item in items:
            started = len(api.arrivals)
            break
        import time

        time.sleep(1.5)  # real time here: the blocking client runs its own event loop
        assert len(api.arrivals) <= started + 4  # what was in flight, at most
        items.close()


@pytest.mark.parametrize(
    "images",
    [b"\x89PNG...", "portrait.jpg", Path("portrait.jpg"), np.zeros((4, 4, 3), np.uint8), 5, None],
    ids=["bytes", "str", "path", "array", "int", "none"],
)
async def test_map_refuses_one_image_or_a_non_iterable_at_the_call(images: object) -> None:
    # Before: one image was iterated (its bytes, its path's characters) into thousands of
    # failed items; a non-iterable failed in a task nobody awaited and the loop hung.
    api = FakeAPI()
    async with clipnormals.AsyncClient(api_key=KEY, transport=api.transport()) as client:
        with pytest.raises(TypeError, match="iterable of images"):
            client.map(images)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="callable"):
            client.map([prepared()], image="path")  # type: ignore[arg-type]
    assert api.arrivals == []


@pytest.mark.parametrize("form", ["async for", "async with"])
async def test_closing_the_client_during_a_map_is_an_error_for_its_consumer(form: str) -> None:
    """Closing the client stops its maps; their consumers hear of it (``ClientClosedError``)
    instead of the iteration ending as if every source had been done."""
    api = FakeAPI(latency=lambda: 1.0, credits=None)
    client = _client(api)
    got: list[clipnormals.MapItem[clipnormals.PreparedImage]] = []

    async def close_soon() -> None:
        await anyio.sleep(2.5)
        await client.aclose()

    async def consume() -> None:
        sources = [prepared(i % 3) for i in range(100)]
        if form == "async for":
            async for item in client.map(sources):
                got.append(item)
        else:
            async with client.map(sources) as items:
                async for item in items:
                    got.append(item)

    async with anyio.create_task_group() as tg:
        tg.start_soon(close_soon)
        with pytest.raises(clipnormals.ClientClosedError, match="while this map ran"):
            await consume()
    assert 0 < len(got) < 100
    assert all(item.ok for item in got)
    sent = len(api.arrivals)
    await anyio.sleep(30)
    assert len(api.arrivals) == sent  # nothing more went out
    assert client.credits.reserved == 0


@pytest.mark.parametrize("form", ["async for", "async with"])
async def test_closing_the_client_after_every_item_was_delivered_loses_nothing(form: str) -> None:
    api = FakeAPI(credits=None)
    client = _client(api)
    sources = [prepared(i) for i in range(2)]
    got = []
    if form == "async for":
        items = client.map(sources)
        got += [await anext(items), await anext(items)]
        await anyio.sleep(1)  # every worker found the sources ended
        await client.aclose()
        got += [item async for item in items]  # ends as it would have
    else:
        async with client.map(sources) as items:
            got += [await anext(items), await anext(items)]
            await anyio.sleep(1)
            await client.aclose()
            got += [item async for item in items]
    assert [item.ok for item in got] == [True, True]


async def test_entering_a_map_of_a_client_closed_since_raises_client_closed() -> None:
    client = _client(FakeAPI())
    items = client.map([prepared(0)])
    await client.aclose()
    with pytest.raises(clipnormals.ClientClosedError):
        async with items:
            pass


def test_failed_items_a_caller_keeps_do_not_keep_their_images() -> None:
    """A failed item's error carries no traceback, whose frames would hold the image: its
    bytes (and its decoded pixels) go as soon as the item is delivered, however many are
    kept."""
    import asyncio
    import tracemalloc

    size = 2 * 2**20
    rng = np.random.default_rng(0)

    def broken_png(_: int) -> bytes:  # a PNG signature, then noise: refused before upload
        return b"\x89PNG\r\n\x1a\n" + rng.bytes(size)

    async def keep_every_item() -> list[clipnormals.MapItem[int]]:
        async with clipnormals.AsyncClient(api_key=KEY, transport=FakeAPI().transport()) as c:
            return [item async for item in c.map(range(20), image=broken_png)]

    tracemalloc.start()
    try:
        kept = asyncio.run(keep_every_item())
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [type(item.error) for item in kept] == [clipnormals.InvalidImageError] * 20
    first = kept[0].error
    assert first is not None
    assert first.__traceback__ is None
    assert first.__cause__ is None or first.__cause__.__traceback__ is None
    assert held < 4 * size  # 20 images were made; without the fix all 20 stay (40 MiB)
