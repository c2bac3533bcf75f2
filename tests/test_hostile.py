"""A client that keeps its promises against broken and hostile servers and careless callers."""

from __future__ import annotations

import asyncio
import gzip

import anyio
import httpx
import pytest

import clipnormals
import clipnormals._core.session

from .fakeapi import KEY, FakeAPI, error, normal_map_jpeg, prepared
from .test_secrets import _leaks

pytestmark = pytest.mark.anyio

CANARY = "sk-canary-7Hq2/x+Z"


@pytest.fixture
def anyio_backend(virtual_time_backend: object) -> object:
    return virtual_time_backend


def _map() -> httpx.Response:
    return httpx.Response(
        200, content=normal_map_jpeg(32, 24), headers={"content-type": "image/jpeg"}
    )


def _client(handler: object, **kwargs: object) -> clipnormals.AsyncClient:
    options: dict[str, object] = {
        "api_key": CANARY,
        "transport": httpx.MockTransport(handler),  # type: ignore[arg-type]
        "retry": clipnormals.RetryPolicy(attempts=2, initial=0.01),
    }
    options.update(kwargs)
    return clipnormals.AsyncClient(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [200, 500])
async def test_a_body_its_encoding_cannot_decode_is_our_error_without_the_key(status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "image/jpeg", "content-encoding": "gzip"}
        return httpx.Response(status, content=b"not gzip at all", headers=headers)

    async with _client(handler) as client:
        with pytest.raises(clipnormals.APIConnectionError, match="could not be decoded") as info:
            await client.surface_normals(prepared())
        assert _leaks(info.value) == []
        async with client.map([prepared()]) as items:
            item = await items.__anext__()
        assert isinstance(item.error, clipnormals.APIConnectionError)
        assert _leaks(item.error) == []


async def test_an_answer_larger_than_any_normal_map_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(clipnormals._core.session, "MAX_MAP_BYTES", 1_000_000)
    bomb = gzip.compress(b"\0" * 5_000_000)  # 5 MB once decoded, from 5 KB on the wire

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "image/jpeg", "content-encoding": "gzip"}
        return httpx.Response(200, content=bomb, headers=headers)

    async with _client(handler) as client:
        with pytest.raises(clipnormals.UnexpectedResponseError, match="larger than 1000000"):
            await client.surface_normals(prepared())
    assert client.stats.attempts == 1  # not retried: not the API


async def test_redirects_are_never_followed_even_by_a_callers_http_client() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.host} {request.headers.get('x-api-key')}")
        if request.url.host == "clipdrop-api.co":
            return httpx.Response(307, headers={"location": "https://elsewhere.example/steal"})
        return httpx.Response(
            200, content=normal_map_jpeg(32, 24), headers={"content-type": "image/jpeg"}
        )

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handler), follow_redirects=True) as mine,
        clipnormals.AsyncClient(api_key=CANARY, http_client=mine) as client,
    ):
        with pytest.raises(clipnormals.UnexpectedResponseError, match="307"):
            await client.surface_normals(prepared())
    assert seen == [f"clipdrop-api.co {CANARY}"]  # the key went nowhere else


async def test_a_base_url_with_a_query_keeps_it_after_the_path() -> None:
    urls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        return httpx.Response(
            200, content=normal_map_jpeg(32, 24), headers={"content-type": "image/jpeg"}
        )

    async with _client(handler, base_url="https://gateway.example/gw?code=abc") as client:
        await client.surface_normals(prepared())
    assert urls == ["https://gateway.example/gw/portrait-surface-normals/v1?code=abc"]


async def test_a_request_id_echoing_the_key_is_scrubbed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "image/jpeg", "x-request-id": f"id-{CANARY}"}
        return httpx.Response(200, content=normal_map_jpeg(32, 24), headers=headers)

    async with _client(handler) as client:
        nm = await client.surface_normals(prepared())
    assert nm.request_id == "id-***"
    assert CANARY not in repr(dict(nm.headers))


async def test_a_404_says_where_and_a_binary_body_is_not_quoted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, content=b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)

    async with _client(handler, base_url="https://gateway.example/gw?code=abc") as client:
        with pytest.raises(clipnormals.UnexpectedResponseError) as info:
            await client.surface_normals(prepared())
    message = info.value.message
    assert "POST https://gateway.example/gw/portrait-surface-normals/v1" in message
    assert "code=abc" not in message  # a gateway's code may be a secret of its own
    assert "bytes of" in message
    assert "\\x" not in message


# -- RetryPolicy.total counts from the first attempt; a retry that cannot start is not made ----


async def test_a_retry_after_beyond_the_total_ends_with_the_429_at_once() -> None:
    api = FakeAPI(script=[error(429, "slow down", **{"retry-after": "8"})] * 5)
    async with clipnormals.AsyncClient(
        api_key=KEY, transport=api.transport(), retry=clipnormals.RetryPolicy(total=2.0)
    ) as client:
        started = anyio.current_time()
        with pytest.raises(clipnormals.RateLimitError):
            await client.surface_normals(prepared())
        assert anyio.current_time() - started < 1.0
        assert client.stats.attempts == 1
        assert client.credits.uncertain == 0


async def test_waiting_for_the_quota_before_the_first_attempt_does_not_count() -> None:
    api = FakeAPI(credits=None)
    async with clipnormals.AsyncClient(
        api_key=KEY,
        transport=api.transport(),
        retry=clipnormals.RetryPolicy(total=5.0),
        rate_limit=clipnormals.RateLimit(requests=60, per=60.0),  # one a second
    ) as client:
        items = [i async for i in client.map([prepared(i % 3) for i in range(15)])]
    assert [repr(i.error) for i in items if not i.ok] == []
    assert client.credits.uncertain == 0
    assert client.stats.attempts == len(api.arrivals) == 15


async def test_a_retry_that_cannot_start_in_time_raises_the_last_error() -> None:
    # The first attempt fails after 4 s; the retry waits for a token the quota gives only at
    # 10 s, past total = 6 s: it is not made, and the 500 is what the caller sees.
    async def handler(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(4.0)
        return error(500, "boom")

    async with clipnormals.AsyncClient(
        api_key=KEY,
        transport=httpx.MockTransport(handler),
        rate_limit=clipnormals.RateLimit(requests=7, per=60.0, burst=1),  # a token every 10 s
        retry=clipnormals.RetryPolicy(total=6.0, initial=0.01),
    ) as client:
        with pytest.raises(clipnormals.ServerError):
            await client.surface_normals(prepared())
        assert client.stats.attempts == 1
        assert client.credits.uncertain == 0


# -- careless callers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "kind", "words"),
    [
        ({"rate_limit": 60}, TypeError, "rate_limit must be a clipnormals.RateLimit"),
        ({"credits": 5}, TypeError, "credits must be a clipnormals.CreditPolicy"),
        ({"retry": 3}, TypeError, "retry must be a clipnormals.RetryPolicy"),
        ({"api_key": 123}, TypeError, "api_key must be a string"),
        ({"max_concurrency": "4"}, TypeError, "max_concurrency must be a whole number"),
        ({"timeout": "5"}, TypeError, "timeout must be a number of seconds"),
        ({"timeout": 0}, ValueError, "positive"),
        ({"timeout": -1}, ValueError, "positive"),
        ({"timeout": httpx.Timeout(5.0, connect=0)}, ValueError, "timeout.connect"),
        ({"event_hooks": {"request": print}}, TypeError, "list of callables"),
        ({"event_hooks": {"requests": []}}, ValueError, "unknown hook 'requests'"),
        ({"default_headers": {"x-team": "é"}}, ValueError, "not plain ASCII"),
        ({"limiter": object()}, TypeError, "Limiter"),
    ],
)
def test_wrong_arguments_fail_at_once_with_their_name(
    options: dict[str, object], kind: type[Exception], words: str
) -> None:
    options.setdefault("api_key", KEY)
    with pytest.raises(kind, match=words):
        clipnormals.AsyncClient(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: clipnormals.RetryPolicy(attempts=2.5), "whole number"),  # type: ignore[arg-type]
        (lambda: clipnormals.RetryPolicy(total=float("nan")), "seconds"),
        (lambda: clipnormals.CreditPolicy(budget=2.5), "whole number"),  # type: ignore[arg-type]
        (lambda: clipnormals.CreditPolicy(reserve=True), "whole number"),
    ],
)
def test_policies_refuse_values_of_the_wrong_kind(make: object, words: str) -> None:
    with pytest.raises((TypeError, ValueError), match=words):
        make()  # type: ignore[operator]


def test_map_on_a_client_whose_event_loop_ended_raises_at_once() -> None:
    api = FakeAPI()
    client = clipnormals.AsyncClient(api_key=KEY, transport=api.transport())

    async def once() -> None:
        await client.surface_normals(prepared())

    asyncio.run(once())
    with pytest.raises(clipnormals.ClientClosedError, match="event loop"):
        client.map([prepared()])


def _jpeg_variants() -> list[bytes]:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(5)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8))
    out = []
    for image, params in [
        (rgb, {}),
        (rgb, {"progressive": True}),
        (rgb, {"comment": b"clipnormals emulator: synthetic map"}),
        (rgb, {"quality": 100, "subsampling": 0}),
        (rgb.convert("L"), {}),
        (rgb.convert("CMYK"), {}),
        (rgb, {"exif": b"Exif\x00\x00" + bytes(40)}),
        (rgb, {"dpi": (300, 300), "optimize": True}),
    ]:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", **params)
        out.append(buffer.getvalue())
    return out


def test_the_answer_header_reader_vouches_only_for_what_pillow_opens_the_same() -> None:
    """The request path reads a plain JPEG answer's header itself instead of opening it with
    Pillow; whenever it vouches for a body (intact, cut short or with bytes changed anywhere),
    Pillow must open that body with the same size and comment, and the file must end in EOI."""
    import io
    import random

    from PIL import Image

    from clipnormals._core.http import _plain_jpeg_header, read_image_body

    rng = random.Random(13)
    vouched = refused = 0
    for original in _jpeg_variants():
        bodies = [original]
        bodies += [original[:cut] for cut in range(0, len(original), 7)]
        for _ in range(300):
            mutated = bytearray(original)
            for _ in range(rng.randint(1, 3)):
                where = rng.randrange(min(len(mutated), 700))  # the headers live up front
                mutated[where] = rng.randrange(256)
            bodies.append(bytes(mutated))
        for body in bodies:
            header = _plain_jpeg_header(body)
            if header is None:
                refused += 1
                continue
            vouched += 1
            with Image.open(io.BytesIO(body)) as image:
                assert image.format == "JPEG"
                assert image.size == header.size
                assert image.info.get("comment") == header.comment
            assert body.rstrip(b"\0\r\n ").endswith(b"\xff\xd9")
            assert read_image_body(body) == header
    assert vouched > 100  # the plain answers and many harmless mutations take the fast path
    assert refused > 100  # cut and broken ones go to Pillow, which decides as before
    # The emulator's label and a plain answer are read without Pillow.
    labelled = _jpeg_variants()[2]
    found = _plain_jpeg_header(labelled)
    assert found is not None
    assert found.comment == b"clipnormals emulator: synthetic map"
