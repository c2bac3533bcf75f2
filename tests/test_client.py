"""The client's request path through httpx.MockTransport: retries, typed errors, halting."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

import clipnormals

from .fakeapi import KEY, FakeAPI, error, normal_map_jpeg, png_bytes, prepared

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(virtual_time_backend: object) -> object:
    return virtual_time_backend


def _client(api: FakeAPI, **kwargs: object) -> clipnormals.AsyncClient:
    options: dict[str, object] = {"api_key": KEY, "transport": api.transport()}
    options.update(kwargs)
    return clipnormals.AsyncClient(**options)  # type: ignore[arg-type]


async def test_request_follows_the_contract() -> None:
    api = FakeAPI()
    async with _client(api) as client:
        nm = await client.surface_normals(png_bytes())
    headers = api.headers_seen[0]
    assert headers["x-api-key"] == KEY
    assert headers.get("accept") in (None, "image/jpeg")
    assert headers["content-type"].startswith("multipart/form-data; boundary=")
    body = api.bodies[0]
    assert body.count(b"Content-Disposition: form-data;") == 1
    assert b'name="image_file"; filename="' in body
    assert png_bytes() in body  # a PNG that needs no change is uploaded byte for byte
    assert nm.jpeg == normal_map_jpeg(32, 24)
    assert nm.credits_remaining == 999
    assert nm.credits_consumed == 1
    assert client.credits.remaining == 999
    assert client.credits.consumed == 1
    assert client.credits.reserved == 0


@pytest.mark.parametrize(
    ("status", "exc_type"),
    [
        (400, clipnormals.BadRequestError),
        (401, clipnormals.AuthenticationError),
        (402, clipnormals.InsufficientCreditsError),
        (403, clipnormals.PermissionDeniedError),
        (406, clipnormals.NotAcceptableError),
        (404, clipnormals.UnexpectedResponseError),
    ],
)
async def test_client_errors_are_typed_and_never_retried(
    status: int, exc_type: type[clipnormals.APIStatusError]
) -> None:
    api = FakeAPI(script=[error(status, f"server says {status}")] + [None] * 5)
    async with _client(api) as client:
        with pytest.raises(exc_type) as info:
            await client.surface_normals(prepared())
    assert len(api.arrivals) == 1
    assert info.value.status_code == status
    assert info.value.error == f"server says {status}"
    assert f"server says {status}" in str(info.value)
    assert client.credits.consumed == 0
    assert client.credits.reserved == 0


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(400),
        httpx.Response(400, content=b""),
        httpx.Response(
            400, content=b"<html>Bad gateway page</html>", headers={"content-type": "text/html"}
        ),
        httpx.Response(
            400, content=b'["not", "an", "object"]', headers={"content-type": "application/json"}
        ),
        httpx.Response(400, content=b"\xff\xfe\x00garbage"),
    ],
)
async def test_unusual_error_bodies_still_give_typed_errors(response: httpx.Response) -> None:
    api = FakeAPI(script=[response])
    async with _client(api) as client:
        with pytest.raises(clipnormals.BadRequestError) as info:
            await client.surface_normals(prepared())
    assert info.value.status_code == 400
    assert info.value.error is None
    assert str(info.value).startswith("400 Bad Request: ")


@pytest.mark.parametrize("status", [402, 403])
async def test_402_and_403_halt_the_client_without_further_io(status: int) -> None:
    api = FakeAPI(script=[error(status, "stop")])
    async with _client(api) as client:
        with pytest.raises(clipnormals.APIStatusError):
            await client.surface_normals(prepared())
        assert client.halted
        with pytest.raises(clipnormals.ClientHaltedError) as info:
            await client.surface_normals(prepared())
        assert info.value.cause is not None
        assert info.value.cause.status_code == status
        items = [item async for item in client.map([prepared(), prepared()])]
    assert all(isinstance(i.error, clipnormals.ClientClosedError) for i in items)
    assert all(i.attempts == 0 for i in items)
    assert len(api.arrivals) == 1


async def test_halt_stops_requests_already_waiting() -> None:
    # A 403 on the first request; 30 more were queued behind the limiter: none is sent.
    api = FakeAPI(script=[error(403, "revoked")])
    async with _client(api, rate_limit=clipnormals.RateLimit(requests=60, per=60.0)) as client:
        items = [item async for item in client.map([prepared()] * 30)]
    assert len(api.arrivals) == 1
    assert sum(isinstance(i.error, clipnormals.PermissionDeniedError) for i in items) == 1
    assert sum(isinstance(i.error, clipnormals.ClientClosedError) for i in items) == 29


async def test_429_burst_then_recovery_loses_nothing() -> None:
    script: list[httpx.Response | Exception | None] = [
        error(429, "Too many requests") for _ in range(6)
    ]
    api = FakeAPI(script=script)
    async with _client(api, retry=clipnormals.RetryPolicy(attempts=10)) as client:
        items = [item async for item in client.map([prepared(i) for i in range(10)])]
    assert all(i.ok for i in items)
    assert api.charged == 10
    assert client.stats.rate_limited == 6
    assert client.credits.consumed == 10


async def test_retry_after_is_honoured_and_pauses_every_sender() -> None:
    api = FakeAPI(script=[None, error(429, "slow down", **{"retry-after": "30"})])
    async with _client(api, rate_limit=clipnormals.RateLimit(requests=600, per=60.0)) as client:
        items = [item async for item in client.map([prepared(i) for i in range(6)])]
    assert all(i.ok for i in items)
    t429 = api.arrivals[1]
    later = api.arrivals[2:]
    assert later
    assert min(later) >= t429 + 30.0
    assert client.stats.rate_limited == 1


async def test_retry_after_as_http_date() -> None:
    when = httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert clipnormals._errors.parse_retry_after(when["retry-after"], now=1445412470.0) == 10.0
    assert clipnormals._errors.parse_retry_after("-5") == 0.0
    assert clipnormals._errors.parse_retry_after("nan") is None
    assert clipnormals._errors.parse_retry_after("") is None


@pytest.mark.parametrize(
    "fault",
    [
        httpx.Response(500),
        httpx.Response(502, text="<html>bad gateway</html>"),
        httpx.Response(503, json={"error": "overloaded"}),
        httpx.ConnectError("connection refused"),
        httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
        httpx.ReadTimeout("timed out"),
        httpx.Response(
            200, content=normal_map_jpeg(32, 24)[:-200], headers={"content-type": "image/jpeg"}
        ),
    ],
    ids=["500", "502-html", "503-json", "refused", "dropped", "timeout", "truncated-jpeg"],
)
async def test_transient_faults_are_retried(fault: httpx.Response | Exception) -> None:
    api = FakeAPI(script=[fault, fault])
    async with _client(api) as client:
        nm = await client.surface_normals(prepared())
    assert nm.jpeg == normal_map_jpeg(32, 24)
    assert len(api.arrivals) == 3
    assert client.stats.retries == 2


async def test_retries_give_up_with_the_last_error() -> None:
    api = FakeAPI(script=[httpx.Response(503)] * 10)
    policy = clipnormals.RetryPolicy(attempts=4, initial=0.1)
    async with _client(api, retry=policy) as client:
        with pytest.raises(clipnormals.ServerError) as info:
            await client.surface_normals(prepared())
    assert info.value.status_code == 503
    assert len(api.arrivals) == 4
    assert client.credits.reserved == 0


async def test_retries_respect_the_total_time_budget() -> None:
    api = FakeAPI(script=[httpx.Response(503)] * 100)
    policy = clipnormals.RetryPolicy(attempts=100, initial=1.0, max_backoff=8.0, total=30.0)
    async with _client(api, retry=policy) as client:
        t0 = anyio.current_time()
        with pytest.raises(clipnormals.ServerError):
            await client.surface_normals(prepared())
        elapsed = anyio.current_time() - t0
    # A retry still waiting for its slot when the total runs out ends right then: at 30 s, give
    # or take the virtual clock's last digit.
    assert elapsed <= policy.total + 1e-6
    assert 2 <= len(api.arrivals) < 100


async def test_timeout_error_type() -> None:
    api = FakeAPI(script=[httpx.ReadTimeout("slow")])
    async with _client(api, retry=clipnormals.RetryPolicy.disabled()) as client:
        with pytest.raises(clipnormals.APITimeoutError):
            await client.surface_normals(prepared())


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(
            200, content=b"<html>captive portal</html>", headers={"content-type": "text/html"}
        ),
        httpx.Response(
            200,
            content=json.dumps({"ok": 1}).encode(),
            headers={"content-type": "application/json"},
        ),
    ],
)
async def test_success_that_is_not_an_image_is_an_error(response: httpx.Response) -> None:
    api = FakeAPI(script=[response])
    async with _client(api) as client:
        with pytest.raises(clipnormals.UnexpectedResponseError):
            await client.surface_normals(prepared())
    assert client.credits.consumed == 0


async def test_invalid_image_is_rejected_before_any_request() -> None:
    api = FakeAPI()
    async with _client(api) as client:
        with pytest.raises(clipnormals.InvalidImageError):
            await client.surface_normals(b"this is not an image")
        with pytest.raises(ValueError, match=r"empty input \(0 bytes\)"):
            await client.surface_normals(b"")
    assert api.arrivals == []
    assert client.credits.reserved == 0


async def test_missing_key_fails_before_any_io(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPDROP_API_KEY", raising=False)
    with pytest.raises(clipnormals.AuthenticationError, match="CLIPDROP_API_KEY"):
        clipnormals.AsyncClient(transport=FakeAPI().transport())


async def test_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPDROP_API_KEY", KEY)
    api = FakeAPI()
    async with clipnormals.AsyncClient(transport=api.transport()) as client:
        await client.surface_normals(prepared())
    assert api.headers_seen[0]["x-api-key"] == KEY


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://clipdrop-api.co", True),
        ("http://127.0.0.1:8765", True),
        ("http://localhost:8765", True),
        ("http://[::1]:8765", True),
        ("http://127.8.9.10", True),
        ("http://clipdrop-api.co", False),
        ("http://10.0.0.5:8765", False),
        ("http://192.168.1.2", False),
        ("ftp://127.0.0.1", False),
    ],
)
async def test_plain_http_only_to_loopback(url: str, ok: bool) -> None:
    if ok:
        async with clipnormals.AsyncClient(api_key=KEY, base_url=url):
            pass
    else:
        with pytest.raises(clipnormals.ClipnormalsError) as info:
            clipnormals.AsyncClient(api_key=KEY, base_url=url)
        assert KEY not in str(info.value)


async def test_closed_client_refuses_calls() -> None:
    api = FakeAPI()
    client = _client(api)
    await client.aclose()
    with pytest.raises(clipnormals.ClientClosedError):
        await client.surface_normals(prepared())
    assert api.arrivals == []


async def test_cancellation_releases_slot_token_and_reservation() -> None:
    api = FakeAPI(latency=lambda: 50.0)
    async with _client(api, max_concurrency=1) as client:
        with anyio.move_on_after(5.0):
            await client.surface_normals(prepared())
        assert client.credits.reserved == 0
        # the single slot is free again: a second call goes through
        api.latency = lambda: 0.0
        nm = await client.surface_normals(prepared())
    assert nm.credits_consumed == 1


async def test_concurrency_is_capped() -> None:
    api = FakeAPI(latency=lambda: 30.0, credits=None)
    async with _client(
        api, max_concurrency=4, rate_limit=clipnormals.RateLimit(requests=6000, per=60.0)
    ) as client:
        items = [item async for item in client.map([prepared()] * 20)]
    assert all(i.ok for i in items)
    assert api.max_in_flight == 4


async def test_map_pulls_sources_lazily() -> None:
    api = FakeAPI(credits=None)
    pulled = 0

    def sources():  # type: ignore[no-untyped-def]
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield prepared(i % 3)

    async with _client(
        api, max_concurrency=4, rate_limit=clipnormals.RateLimit(requests=600, per=60.0)
    ) as client:
        taken = 0
        async with client.map(sources()) as items:
            async for _item in items:
                taken += 1
                if taken == 20:
                    break
        assert pulled <= 20 + 8 + 1
        assert client.credits.reserved == 0


async def test_map_accepts_async_iterables_and_reports_source_errors() -> None:
    api = FakeAPI(credits=None)

    async def sources():  # type: ignore[no-untyped-def]
        yield prepared(1)
        yield b"not an image"
        yield prepared(2)

    async with _client(api) as client:
        items = sorted([i async for i in client.map(sources())], key=lambda i: i.index)
    assert [i.ok for i in items] == [True, False, True]
    assert isinstance(items[1].error, clipnormals.InvalidImageError)
    assert items[1].attempts == 0
    with pytest.raises(clipnormals.InvalidImageError):
        items[1].unwrap()
    assert items[0].unwrap().jpeg == normal_map_jpeg(32, 24)


async def test_map_propagates_a_failing_source_iterable() -> None:
    def sources():  # type: ignore[no-untyped-def]
        yield prepared()
        raise OSError("disk gone")

    async with _client(FakeAPI()) as client:
        with pytest.raises(OSError, match="disk gone"):
            async for _ in client.map(sources()):
                pass


async def test_an_answer_is_read_once_and_its_header_carried_to_the_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from PIL import Image

    import clipnormals._normals.normalmap as normalmap_module

    opened: list[int] = []
    real_open = Image.open

    def counting_open(fp: object, *args: object, **kwargs: object) -> Image.Image:
        opened.append(1)
        return real_open(fp, *args, **kwargs)  # type: ignore[arg-type]

    def no_second_read(data: bytes) -> object:
        raise AssertionError("the answer's header was read a second time")

    api = FakeAPI()
    async with _client(api) as client:
        source = prepared()  # prepared beforehand: only the answer is read below
        monkeypatch.setattr(Image, "open", counting_open)
        monkeypatch.setattr(normalmap_module, "_read_header", no_second_read)
        nm = await client.surface_normals(source)
        monkeypatch.undo()
    assert opened == []  # a plain JPEG answer: its header is read without Pillow
    assert nm.size == (32, 24)
    assert not nm.synthetic
    assert nm.normals.shape == (24, 32, 3)  # decodes from the bytes as before


async def test_small_image_bytes_are_prepared_on_the_loop_and_still_refused_when_cut_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import anyio.to_thread

    hops: list[object] = []
    real_run_sync = anyio.to_thread.run_sync

    async def counting_run_sync(func: object, *args: object, **kwargs: object) -> object:
        hops.append(func)
        return await real_run_sync(func, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting_run_sync)
    api = FakeAPI()
    whole = png_bytes()
    async with _client(api) as client:
        nm = await client.surface_normals(whole)
        assert hops == []  # checked on the loop: no worker thread
        for cut in (whole[: len(whole) // 2], whole[:-12], whole[:40]):
            with pytest.raises(clipnormals.InvalidImageError):
                await client.surface_normals(cut)
        assert hops == []
    assert nm.size == (32, 24)
    assert len(api.arrivals) == 1  # only the whole image was sent
    assert api.bodies[0].count(whole) == 1
    assert client.credits.reserved == 0


async def test_image_bytes_declaring_many_pixels_are_prepared_in_a_worker_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    import anyio.to_thread
    from PIL import Image

    hops: list[object] = []
    real_run_sync = anyio.to_thread.run_sync

    async def counting_run_sync(func: object, *args: object, **kwargs: object) -> object:
        hops.append(func)
        return await real_run_sync(func, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting_run_sync)
    buffer = io.BytesIO()
    Image.new("L", (1200, 1000)).save(buffer, format="PNG")  # a few kB, 1.2 million pixels
    api = FakeAPI()
    async with _client(api) as client:
        prepared_here = await client.prepare(buffer.getvalue())
    assert prepared_here.size == (1200, 1000)
    assert len(hops) == 1
