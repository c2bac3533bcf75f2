"""The API key never shows: not in errors, reprs, logs or tracebacks."""

from __future__ import annotations

import http.server
import json
import logging
import threading
import traceback
import urllib.parse
from collections.abc import Iterator

import httpx
import pytest

import clipnormals

from .fakeapi import KEY, FakeAPI, error, prepared

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(virtual_time_backend: object) -> object:
    return virtual_time_backend


def _everything_said(exc: BaseException) -> str:
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    if isinstance(exc, clipnormals.APIStatusError):
        parts += [repr(exc.headers), exc.body.decode("latin-1"), str(exc.error)]
    if isinstance(exc, clipnormals.ClientHaltedError):
        parts.append(_everything_said(exc.cause))
    return "\n".join(parts)


@pytest.mark.parametrize(
    "fault",
    [
        error(400, f"bad key {KEY} echoed by a careless server"),
        error(403, "Invalid api key"),
        httpx.Response(500, text=f"<html>proxy error for x-api-key: {KEY}</html>"),
        httpx.ConnectError(f"failed to connect, headers={{'x-api-key': '{KEY}'}}"),
        httpx.ReadTimeout("timed out"),
    ],
)
async def test_key_absent_from_errors_and_logs(
    fault: httpx.Response | Exception, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: ours, httpx's, httpcore's
    api = FakeAPI(script=[fault] * 3)
    async with clipnormals.AsyncClient(
        api_key=KEY, transport=api.transport(), retry=clipnormals.RetryPolicy(attempts=2)
    ) as client:
        with pytest.raises(clipnormals.ClipnormalsError) as info:
            await client.surface_normals(prepared())
        assert KEY not in repr(client)
        assert KEY not in repr(client.credits)
        if client.halted:
            with pytest.raises(clipnormals.ClientClosedError) as again:
                await client.surface_normals(prepared())
            assert KEY not in _everything_said(again.value)
    assert KEY not in _everything_said(info.value)
    assert caplog.records, "the failure should have been logged"
    for record in caplog.records:
        assert KEY not in record.getMessage()
    assert KEY not in caplog.text


async def test_key_absent_from_client_repr_and_vars() -> None:
    client = clipnormals.AsyncClient(api_key=KEY, transport=FakeAPI().transport())
    try:
        assert KEY not in repr(client)
        assert KEY not in str(vars(client))
    finally:
        await client.aclose()


def test_key_with_newline_is_refused_without_echo() -> None:
    with pytest.raises(clipnormals.AuthenticationError) as info:
        clipnormals.AsyncClient(api_key=KEY + "\n" + KEY)
    assert KEY not in _everything_said(info.value)


# -- nothing reachable from a raised exception holds the key -----------------------------------

CANARY = "sk-canary-7Hq2/x+Z"  # a '/' and a '+': JSON and URL encodings differ from the raw key


def _strings_reachable(root: object) -> Iterator[str]:
    """Every str and bytes reachable from ``root``: attributes, args, causes, contexts, notes,
    group members, containers (bounded, so cycles and big graphs end)."""
    seen: set[int] = set()
    stack: list[tuple[object, int]] = [(root, 0)]
    while stack:
        obj, depth = stack.pop()
        if id(obj) in seen or depth > 12:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            yield obj
            continue
        if isinstance(obj, bytes | bytearray | memoryview):
            yield bytes(obj).decode("latin-1")
            continue
        if isinstance(obj, int | float | bool | type(None)) or callable(obj):
            continue
        children: list[object] = []
        if isinstance(obj, BaseException):
            children += [obj.args, obj.__cause__, obj.__context__, str(obj), repr(obj)]
            children += list(getattr(obj, "__notes__", []))
            children += list(getattr(obj, "exceptions", ()))
            children.append("".join(traceback.format_exception(obj)))
        if isinstance(obj, dict):
            children += list(obj.keys()) + list(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            children += list(obj)
        elif hasattr(obj, "items") and callable(obj.items):  # header multidicts
            children += [kv for pair in obj.items() for kv in pair]
        children += list(getattr(obj, "__dict__", {}).values())
        for slot in getattr(type(obj), "__slots__", ()):
            children.append(getattr(obj, slot, None))
        stack.extend((child, depth + 1) for child in children)


def _leaks(exc: BaseException) -> list[str]:
    forms = {CANARY, json.dumps(CANARY)[1:-1], urllib.parse.quote(CANARY, safe="")}
    return [s[:200] for s in _strings_reachable(exc) if any(form in s for form in forms)]


def _echo(status: int, ctype: str = "application/json") -> httpx.Response:
    body = json.dumps({"error": f"bad key {CANARY}", "key": CANARY}).encode()
    if ctype != "application/json":
        body = f"you sent x-api-key: {CANARY} / {urllib.parse.quote(CANARY, safe='')}".encode()
    return httpx.Response(
        status, content=body, headers={"content-type": ctype, "x-echo": CANARY, CANARY: "1"}
    )


@pytest.mark.parametrize(
    "answer",
    [
        _echo(400),
        _echo(401),
        _echo(403),
        _echo(429),
        _echo(500),
        _echo(200, "text/plain"),
        _echo(404, "text/html"),
        httpx.ConnectError(f"connect failed, x-api-key={CANARY}"),
        httpx.ReadTimeout(f"read timed out ({CANARY})"),
        httpx.RemoteProtocolError("peer closed connection"),
    ],
    ids=["400", "401", "403", "429", "500", "200-text", "404-html", "connect", "timeout", "reset"],
)
async def test_no_exception_graph_reaches_the_key(answer: httpx.Response | Exception) -> None:
    # httpx exceptions hold the request, and the request holds the key: none may be reachable.

    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer.__class__(str(answer), request=request)  # as httpx raises them
        return answer

    policy = clipnormals.RetryPolicy(attempts=2, initial=0.01, total=5.0)
    async with clipnormals.AsyncClient(
        api_key=CANARY, transport=httpx.MockTransport(handler), retry=policy
    ) as client:
        with pytest.raises(clipnormals.ClipnormalsError) as info:
            await client.surface_normals(prepared())
        assert _leaks(info.value) == []
        if client.halted:
            with pytest.raises(clipnormals.ClientHaltedError) as again:
                await client.surface_normals(prepared())
            assert _leaks(again.value) == []
        async with client.map([prepared()], prefetch=0) as items:
            async for item in items:
                assert item.error is not None
                assert _leaks(item.error) == []


def _wrapped() -> None:
    request = httpx.Request("POST", "http://h", headers={"k": CANARY})
    try:
        raise httpx.ConnectError("x", request=request)
    except httpx.ConnectError:
        raise clipnormals.APIConnectionError("wrapped") from None


def test_the_walker_finds_a_key_where_it_is() -> None:
    with pytest.raises(clipnormals.APIConnectionError) as info:
        _wrapped()
    assert _leaks(info.value)  # __context__ is kept even "from None": the walker must see it


@pytest.mark.parametrize(
    "key",
    [
        "sk-abc\u2014def",  # an em dash pasted from a document
        "sk-abc def",
        "sk-\u00e9t\u00e9",
        "sk-abc\tdef",
        "sk-abc\x7fdef",
    ],
)
def test_keys_outside_visible_ascii_are_refused_without_quoting_them(key: str) -> None:
    with pytest.raises(clipnormals.AuthenticationError) as info:
        clipnormals.AsyncClient(api_key=key)
    said = _everything_said(info.value)
    assert key not in said
    assert "sk-" not in said  # not even a piece of it
    assert "visible ASCII" in info.value.message


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://name.localhost:8765", False),
        ("http://localhost.example.com", False),
        ("http://127.0.0.1.nip.io", False),
        ("http://localhost:8765", True),
        ("http://127.9.9.9:1", True),
        ("http://[::1]:8765", True),
    ],
)
def test_only_literal_loopback_counts_for_plain_http(url: str, ok: bool) -> None:
    if ok:
        clipnormals.AsyncClient(api_key=KEY, base_url=url)
    else:
        with pytest.raises(clipnormals.ClipnormalsError, match="plain http"):
            clipnormals.AsyncClient(api_key=KEY, base_url=url)


@pytest.mark.loopback
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("status", [200, 401, 429, 500])
async def test_an_echoing_server_on_a_real_socket_leaks_nothing(status: int) -> None:
    class Echo(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            key = self.headers["x-api-key"]
            body = f"echo: {key}".encode()
            self.send_response(status)
            self.send_header("content-type", "text/plain")
            self.send_header("x-echo", key)
            self.send_header("retry-after", "0")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        policy = clipnormals.RetryPolicy(attempts=2, initial=0.01, total=1.0)
        async with clipnormals.AsyncClient(api_key=CANARY, base_url=url, retry=policy) as client:
            with pytest.raises(clipnormals.ClipnormalsError) as info:
                await client.surface_normals(prepared())
        assert _leaks(info.value) == []
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_a_200_echoing_the_key_in_its_headers_is_scrubbed_in_every_form() -> None:
    from .fakeapi import normal_map_jpeg

    forms = [CANARY, json.dumps(CANARY)[1:-1], urllib.parse.quote(CANARY, safe="")]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            content=normal_map_jpeg(32, 24),
            headers={
                "content-type": "image/jpeg",
                "x-request-id": f"req-{forms[2]}",
                "x-echo": " ".join(forms),
                f"x-{forms[2]}": "1",
            },
        )

    async with clipnormals.AsyncClient(
        api_key=CANARY, transport=httpx.MockTransport(handler)
    ) as client:
        nm = await client.surface_normals(prepared())
    shown = [*nm.headers, *nm.headers.values(), nm.request_id or ""]
    assert [s for s in shown if any(form in s for form in forms)] == []
    assert nm.headers["x-echo"] == "*** *** ***"
    assert nm.request_id == "req-***"
