"""How an upload is put on the wire: its multipart body, its headers, and no cookies kept."""

from __future__ import annotations

import re

import httpx
import pytest

import clipnormals
from clipnormals._core.http import INLINE_UPLOAD_BYTES, multipart_upload
from clipnormals.images import prepare_image

from .fakeapi import KEY, normal_map_jpeg, png_bytes, prepared

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(virtual_time_backend: object) -> object:
    return virtual_time_backend


_BOUNDARY = re.compile(rb"boundary=([0-9a-f]+)")

NAMES = [
    "portrait.png",
    'say "cheese".png',
    "back\\slash.png",
    "tab\there.png",
    "line\r\nbreak.png",
    "esc\x1b.png",
    "nul\x00.png",
    "portrait-é-日本.png",
    "",
]


def _httpx_body(field: str, filename: str, content_type: str, data: bytes) -> tuple[str, bytes]:
    request = httpx.Request(
        "POST", "http://api.test/x", files={field: (filename, data, content_type)}
    )
    return request.headers["content-type"], request.read()


def _same_apart_from_the_boundary(content_type: str, body: bytes) -> bytes:
    match = _BOUNDARY.search(content_type.encode())
    assert match is not None
    return body.replace(match.group(1), b"BOUNDARY")


@pytest.mark.parametrize("filename", NAMES)
@pytest.mark.parametrize(
    "data", [b"\x89PNG\r\n\x1a\n", b"--\r\n--boundary\r\n\r\n" * 3 + bytes(range(256))]
)
def test_the_multipart_body_is_byte_for_byte_what_httpx_would_send(
    filename: str, data: bytes
) -> None:
    ours = multipart_upload("image_file", filename, "image/png", data)
    theirs = _httpx_body("image_file", filename, "image/png", data)
    assert ours[0].startswith("multipart/form-data; boundary=")
    assert _same_apart_from_the_boundary(*ours) == _same_apart_from_the_boundary(*theirs)


def test_every_body_has_a_fresh_boundary() -> None:
    boundaries = {multipart_upload("f", "a.png", "image/png", b"x")[0] for _ in range(100)}
    assert len(boundaries) == 100


def _capture(*, set_cookie: bool = True) -> tuple[list[httpx.Request], httpx.MockTransport]:
    """The requests a mock server received (read whole); its answers set a cookie."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return httpx.Response(
            200,
            content=normal_map_jpeg(32, 24),
            headers={
                "content-type": "image/jpeg",
                "x-remaining-credits": "99",
                "x-credits-consumed": "1",
                **({"set-cookie": "lb=node-7; Path=/"} if set_cookie else {}),
            },
        )

    return seen, httpx.MockTransport(handler)


def _comparable(request: httpx.Request) -> list[tuple[str, str]]:
    return [
        (name, "multipart/form-data" if name == "content-type" else value)
        for name, value in request.headers.multi_items()
    ]


async def test_the_client_s_own_requests_match_what_build_request_makes() -> None:
    """The client's own httpx client assembles uploads directly; a caller's ``http_client``
    goes through ``build_request``. Same headers, in the same order, and the same timeouts."""
    seen, transport = _capture(set_cookie=False)  # a caller's client would keep it
    timeout = httpx.Timeout(7.0, connect=2.0)
    async with clipnormals.AsyncClient(
        api_key=KEY,
        transport=transport,
        timeout=timeout,
        default_headers={"x-trace": "abc", "x-api-key": "not-this-one"},
    ) as client:
        await client.surface_normals(prepared())
        await client.with_options(timeout=3.0).surface_normals(prepared(1))
    own_default, own_per_call = seen
    user_agent = own_default.headers["user-agent"]
    async with (
        httpx.AsyncClient(
            base_url="https://clipdrop-api.co",
            transport=transport,
            timeout=timeout,
            headers={"user-agent": user_agent, "x-trace": "abc", "x-api-key": "not-this-one"},
        ) as http,
        clipnormals.AsyncClient(api_key=KEY, http_client=http, timeout=timeout) as client,
    ):
        await client.surface_normals(prepared())
        await client.with_options(timeout=3.0).surface_normals(prepared(1))
    built_default, built_per_call = seen[2:]
    for own, built in [(own_default, built_default), (own_per_call, built_per_call)]:
        assert own.url == built.url
        assert _comparable(own) == _comparable(built)
        assert own.headers["x-api-key"] == KEY
        assert own.extensions["timeout"] == built.extensions["timeout"]
        assert _same_apart_from_the_boundary(
            own.headers["content-type"], own.content
        ) == _same_apart_from_the_boundary(built.headers["content-type"], built.content)
    assert own_default.extensions["timeout"] == timeout.as_dict()
    assert own_per_call.extensions["timeout"] == httpx.Timeout(3.0).as_dict()


async def test_a_large_upload_is_streamed_whole() -> None:
    """Above ``INLINE_UPLOAD_BYTES`` the image goes through httpx's multipart stream (no copy
    of it is made); what arrives is the same body."""
    data = png_bytes(400, 300, seed=3)
    assert len(data) > INLINE_UPLOAD_BYTES
    image = prepare_image(data, name="big.png")
    seen, transport = _capture()
    streams: list[object] = []

    async def before_sending(request: httpx.Request) -> None:
        streams.append(request.stream)  # the mock transport reads the body before answering

    async with clipnormals.AsyncClient(
        api_key=KEY, transport=transport, event_hooks={"request": [before_sending]}
    ) as client:
        await client.surface_normals(image)
    (request,) = seen
    (stream,) = streams
    assert not isinstance(stream, httpx.ByteStream)  # httpx's multipart stream, not one copy
    expected = multipart_upload("image_file", "big.png", "image/png", data)
    assert _same_apart_from_the_boundary(
        request.headers["content-type"], request.content
    ) == _same_apart_from_the_boundary(*expected)
    assert request.headers["content-length"] == str(len(request.content))


async def test_cookies_a_server_sets_are_neither_kept_nor_sent() -> None:
    """Small uploads and large ones (which go through ``build_request``, where a kept cookie
    would be added) alike."""
    big = prepare_image(png_bytes(400, 300, seed=3))
    assert len(big.data) > INLINE_UPLOAD_BYTES
    seen, transport = _capture()
    async with clipnormals.AsyncClient(api_key=KEY, transport=transport) as client:
        for image in [prepared(0), big, prepared(1), big]:
            await client.surface_normals(image)
    assert len(seen) == 4
    assert [request.headers.get("cookie") for request in seen] == [None] * 4


async def test_a_callers_http_client_keeps_its_own_cookies() -> None:
    seen, transport = _capture()
    async with (
        httpx.AsyncClient(
            base_url="https://clipdrop-api.co", transport=transport, cookies={"team": "blue"}
        ) as http,
        clipnormals.AsyncClient(api_key=KEY, http_client=http) as client,
    ):
        await client.surface_normals(prepared())
        await client.surface_normals(prepared(1))
    assert seen[0].headers["cookie"] == "team=blue"
    assert "lb=node-7" in seen[1].headers["cookie"]  # httpx's own handling, unchanged


@pytest.mark.parametrize("size", ["small", "large"])
async def test_a_callers_params_keep_the_base_urls_own_query(size: str) -> None:
    """A gateway's ``?code=...`` in the base URL survives an ``http_client`` with ``params=``
    (httpx alone would replace the URL's query with the client's parameters)."""
    image = prepared() if size == "small" else prepare_image(png_bytes(400, 300, seed=3))
    seen, transport = _capture()
    async with (
        httpx.AsyncClient(transport=transport, params={"team": "blue"}) as http,
        clipnormals.AsyncClient(
            api_key=KEY, base_url="http://127.0.0.1:9/gw?code=a%2Fb", http_client=http
        ) as client,
    ):
        await client.surface_normals(image)
    (request,) = seen
    assert request.url.path == "/gw/portrait-surface-normals/v1"
    assert dict(request.url.params) == {"team": "blue", "code": "a/b"}


async def test_the_base_urls_query_is_sent_as_written() -> None:
    seen, transport = _capture()
    big = prepare_image(png_bytes(400, 300, seed=3))
    async with clipnormals.AsyncClient(
        api_key=KEY, base_url="http://127.0.0.1:9/gw?code=a%2Fb&x=%20y", transport=transport
    ) as client:
        await client.surface_normals(prepared())
        await client.surface_normals(big)
    assert [request.url.query for request in seen] == [b"code=a%2Fb&x=%20y"] * 2
