"""What company networks and web backends configure: an httpx client of their own, a proxy,
certificates, default headers, event hooks; per-call options; the answer's headers."""

from __future__ import annotations

import logging
import select
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

import clipnormals
from clipnormals.emulator import EmulatorConfig, Latency, RunningServer, start_in_thread

from .fakeapi import KEY, FakeAPI, prepared

pytestmark = pytest.mark.anyio


def _client(api: FakeAPI, **kwargs: object) -> clipnormals.AsyncClient:
    options: dict[str, object] = {"api_key": KEY, "transport": api.transport()}
    options.update(kwargs)
    return clipnormals.AsyncClient(**options)  # type: ignore[arg-type]


async def test_an_http_client_of_ones_own_is_used_and_never_closed() -> None:
    api = FakeAPI()
    async with httpx.AsyncClient(transport=api.transport(), headers={"x-team": "a"}) as mine:
        async with clipnormals.AsyncClient(api_key=KEY, http_client=mine) as client:
            await client.surface_normals(prepared())
        assert not mine.is_closed  # still the caller's
        assert api.headers_seen[0]["x-team"] == "a"
        assert api.headers_seen[0]["x-api-key"] == KEY


@pytest.mark.parametrize(
    "clash",
    [
        {"transport": httpx.MockTransport(lambda r: httpx.Response(500))},
        {"proxy": "http://127.0.0.1:3128"},
        {"verify": False},
        {"default_headers": {"a": "b"}},
        {"event_hooks": {"request": []}},
    ],
)
def test_settings_for_a_client_of_ones_own_are_refused(clash: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="http_client"):
        clipnormals.AsyncClient(api_key=KEY, http_client=httpx.AsyncClient(), **clash)  # type: ignore[arg-type]


async def test_default_headers_and_event_hooks() -> None:
    api = FakeAPI()
    seen: list[str] = []

    async def on_request(request: httpx.Request) -> None:
        seen.append(f"request {request.method}")

    async def on_response(response: httpx.Response) -> None:
        seen.append(f"response {response.status_code}")

    async with _client(
        api,
        default_headers={"x-trace": "abc", "x-api-key": "not-this-one"},
        event_hooks={"request": [on_request], "response": [on_response]},
    ) as client:
        await client.surface_normals(prepared())
    assert seen == ["request POST", "response 200"]
    assert api.headers_seen[0]["x-trace"] == "abc"
    assert api.headers_seen[0]["x-api-key"] == KEY  # the client's key always wins


async def test_the_answer_headers_and_request_id_come_with_the_result() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            content=_jpeg(),
            headers={
                "content-type": "image/jpeg",
                "x-request-id": "req-42",
                "x-remaining-credits": "7",
                "set-cookie": "session=secret",
            },
        )

    async with clipnormals.AsyncClient(api_key=KEY, transport=httpx.MockTransport(handler)) as c:
        nm = await c.surface_normals(prepared())
    assert nm.request_id == "req-42"
    assert nm.headers["x-remaining-credits"] == "7"
    assert "set-cookie" not in nm.headers


def _jpeg() -> bytes:
    from .fakeapi import normal_map_jpeg

    return normal_map_jpeg(32, 24)


async def test_a_per_call_timeout_applies_to_that_call_only() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(0.3)
        return httpx.Response(200, content=_jpeg(), headers={"content-type": "image/jpeg"})

    # MockTransport ignores httpx's timeouts, so observe the deadline through the request.
    timeouts: list[object] = []

    async def record(request: httpx.Request) -> None:
        timeouts.append(request.extensions["timeout"]["read"])

    async with clipnormals.AsyncClient(
        api_key=KEY,
        transport=httpx.MockTransport(handler),
        timeout=30.0,
        event_hooks={"request": [record]},
    ) as client:
        await client.surface_normals(prepared(), timeout=2.5)
        await client.surface_normals(prepared())
    assert timeouts == [2.5, 30.0]


async def test_with_options_shares_the_quota_the_credits_and_the_pool() -> None:
    api = FakeAPI(credits=5)
    async with _client(api, rate_limit=clipnormals.RateLimit(requests=600, per=60.0)) as client:
        quick = client.with_options(retry=clipnormals.RetryPolicy.disabled(), timeout=5.0)
        await quick.surface_normals(prepared())
        await client.surface_normals(prepared())
        assert quick.credits is client.credits
        assert client.credits.consumed == 2
        assert quick.stats.attempts == client.stats.attempts == 2
        assert quick.retry.attempts == 1
        assert client.retry.attempts == 8
        await quick.aclose()  # a view closes nothing
        await client.surface_normals(prepared())
    with pytest.raises(clipnormals.ClientClosedError):
        await quick.surface_normals(prepared())  # closing the client closed its views


async def test_a_view_keeps_its_own_retry_policy() -> None:
    api = FakeAPI(script=[httpx.Response(500), httpx.Response(500)])
    async with _client(api) as client:
        view = client.with_options(retry=clipnormals.RetryPolicy.disabled())
        with pytest.raises(clipnormals.ServerError):
            await view.surface_normals(prepared())
        await client.surface_normals(prepared())  # the original retries past the second 500
    assert len(api.arrivals) == 3


def test_proxy_variables_ignored_by_a_custom_transport_are_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    caplog.set_level(logging.WARNING, logger="clipnormals")
    clipnormals.AsyncClient(api_key=KEY, transport=httpx.MockTransport(lambda r: None))  # type: ignore[arg-type,return-value]
    assert "HTTPS_PROXY" in caplog.text
    assert "requests go direct" in caplog.text


# -- real sockets: a forward proxy, and TLS with a CA of one's own --------------------------


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningServer]:
    with start_in_thread(EmulatorConfig(keys={KEY: 1000})) as server:
        yield server


@pytest.fixture(scope="module")
def tls_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The emulator behind TLS with a certificate signed by no public CA."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    import uvicorn

    from clipnormals.emulator import Emulator

    config = uvicorn.Config(
        Emulator(EmulatorConfig(keys={KEY: 100})).app,
        host="127.0.0.1",
        port=0,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}", cert
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.loopback
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_verify_takes_a_ca_bundle_or_an_ssl_context(tls_emulator: tuple[str, Path]) -> None:
    url, cert = tls_emulator
    retry = clipnormals.RetryPolicy(attempts=1, circuit_failures=0)
    async with clipnormals.AsyncClient(api_key=KEY, base_url=url, retry=retry) as client:
        with pytest.raises(clipnormals.APIConnectionError, match="CERTIFICATE_VERIFY_FAILED") as e:
            await client.surface_normals(prepared())
        assert "self-signed certificate" in e.value.message  # OpenSSL's reason, not an errno
        assert "Operation not permitted" not in e.value.message
    context = ssl.create_default_context(cafile=str(cert))
    for verify in (context, str(cert)):
        async with clipnormals.AsyncClient(
            api_key=KEY, base_url=url, verify=verify, retry=retry
        ) as client:
            nm = await client.surface_normals(prepared())
            assert nm.credits_consumed == 1


def _connect_proxy() -> tuple[socketserver.ThreadingTCPServer, list[str]]:
    """A forward proxy that tunnels CONNECT requests (how https goes through a proxy)."""
    tunnels: list[str] = []

    class Tunnel(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = self.request.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method != "CONNECT":
                self.request.sendall(
                    b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n"
                )
                return
            tunnels.append(target)
            host, port = target.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=10) as upstream:
                self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                pair = [self.request, upstream]
                for _ in range(100_000):  # bounded: ends when either side closes
                    ready, _, _ = select.select(pair, [], [], 10)
                    if not ready:
                        return
                    for sock in ready:
                        data = sock.recv(65536)
                        if not data:
                            return
                        (upstream if sock is self.request else self.request).sendall(data)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Tunnel)
    server.daemon_threads = True
    return server, tunnels


@pytest.mark.loopback
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_requests_go_through_the_proxy_given(tls_emulator: tuple[str, Path]) -> None:
    url, cert = tls_emulator
    proxy, tunnels = _connect_proxy()
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        async with clipnormals.AsyncClient(
            api_key=KEY,
            base_url=url,
            proxy=f"http://127.0.0.1:{proxy.server_address[1]}",
            verify=str(cert),
        ) as client:
            nm = await client.surface_normals(prepared())
        assert nm.credits_consumed == 1
        assert tunnels == [url.removeprefix("https://")]  # the proxy saw only where, never what
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(5)


def test_plain_http_to_loopback_through_a_proxy_is_refused() -> None:
    with pytest.raises(ValueError, match="proxy would read it"):
        clipnormals.AsyncClient(
            api_key=KEY, base_url="http://127.0.0.1:8765", proxy="http://127.0.0.1:3128"
        )


@pytest.mark.loopback
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_proxy_variables_never_apply_to_a_loopback_emulator(
    emulator: RunningServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.3:9")  # nothing listens there
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.3:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    caplog.set_level(logging.WARNING, logger="clipnormals")
    async with clipnormals.AsyncClient(api_key=KEY, base_url=emulator.url) as client:
        nm = await client.surface_normals(prepared())
    assert nm.credits_consumed == 1
    assert caplog.text == ""  # and no warning about proxy variables that do not apply


def test_the_blocking_client_refuses_an_http_client_of_the_callers_loop() -> None:
    http = httpx.AsyncClient()
    with pytest.raises(ValueError, match="own event loop"):
        clipnormals.Client(api_key=KEY, http_client=http)
    anyio.run(http.aclose)


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ({"x-trace": "a\r\nb"}, "control character"),
        ({"x-trace": "a\x00b"}, "control character"),
        ({"x trace": "a"}, "not a header name"),
        ({"x-trace:": "a"}, "not a header name"),
        ({"": "a"}, "not a header name"),
        ({"Content-Type": "text/plain"}, "request's own body"),
        ({"content-length": "10"}, "request's own body"),
        ({"Transfer-Encoding": "chunked"}, "request's own body"),
        ({"Host": "elsewhere.example"}, "request's own body"),
        ({"Content-Encoding": "gzip"}, "request's own body"),
    ],
)
async def test_headers_that_cannot_be_sent_are_refused_when_the_client_is_built(
    headers: dict[str, str], words: str
) -> None:
    # Before: accepted, then every request failed as a "connection error" and was retried.
    with pytest.raises(ValueError, match=words):
        clipnormals.AsyncClient(api_key=KEY, default_headers=headers)


@pytest.mark.parametrize(
    "name", ["Content-Type", "content-length", "TRANSFER-ENCODING", "Host", "Content-Encoding"]
)
async def test_an_http_client_whose_headers_describe_a_body_is_refused(name: str) -> None:
    # Before: a Content-Type there broke only uploads over 256 KiB (httpx's own multipart
    # encoder keeps a client's Content-Type); a Content-Length broke every upload with h11's
    # own error, untranslated.
    http = httpx.AsyncClient(headers={name: "10"})
    with pytest.raises(ValueError, match=f"http_client=: its headers name {name.lower()}"):
        clipnormals.AsyncClient(api_key=KEY, http_client=http)
    await http.aclose()


async def test_a_header_with_a_tab_and_punctuation_is_sent() -> None:
    api = FakeAPI()
    headers = {"x-trace.id_1": "a\tb; c=d"}
    async with clipnormals.AsyncClient(
        api_key=KEY, transport=api.transport(), default_headers=headers
    ) as client:
        await client.surface_normals(prepared())
    assert api.headers_seen[0]["x-trace.id_1"] == "a\tb; c=d"


def test_a_ca_bundle_that_is_not_one_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nowhere\.pem.*No such file"):
        clipnormals.AsyncClient(api_key=KEY, verify=str(tmp_path / "nowhere.pem"))
    text = tmp_path / "notes.txt"
    text.write_text("not a certificate")
    with pytest.raises(ValueError, match="not a CA bundle"):
        clipnormals.AsyncClient(api_key=KEY, verify=str(text))


async def test_an_error_carries_the_request_id_and_no_cookie() -> None:
    api = FakeAPI(
        script=[
            httpx.Response(
                400,
                json={"error": "bad"},
                headers={"x-request-id": "req-42", "set-cookie": "session=secret"},
            )
        ]
    )
    async with clipnormals.AsyncClient(api_key=KEY, transport=api.transport()) as client:
        with pytest.raises(clipnormals.BadRequestError) as caught:
            await client.surface_normals(prepared())
    assert caught.value.request_id == "req-42"
    assert "set-cookie" not in caught.value.headers


@pytest.mark.loopback
async def test_calls_waiting_when_the_client_closes_get_client_closed_error() -> None:
    # Before: httpx's bare RuntimeError ("Cannot send a request, as the client has been
    # closed") reached the callers whose requests had not been sent yet.
    config = EmulatorConfig(
        keys={KEY: 100}, limit=None, synth="canned", latency=Latency(seconds=0.3)
    )
    with start_in_thread(config) as server:
        client = clipnormals.AsyncClient(
            api_key=KEY, base_url=server.url, rate_limit=clipnormals.RateLimit(requests=5, per=1.0)
        )
        errors: list[BaseException] = []

        async def call() -> None:
            try:
                await client.surface_normals(prepared())
            except Exception as exc:
                errors.append(exc)

        async with client:
            await client.surface_normals(prepared())
            async with anyio.create_task_group() as tg:
                for _ in range(6):
                    tg.start_soon(call)
                await anyio.sleep(0.1)
                await client.aclose()
    assert len(errors) == 6
    assert {type(e) for e in errors} == {clipnormals.ClientClosedError}


async def test_idle_connections_are_dropped_before_common_servers_close_them() -> None:
    # A connection kept as long as the server keeps it (httpx's 5 s, uvicorn's 5 s) races the
    # server's close after a pause of that length: every pooled connection then fails once.
    async with clipnormals.AsyncClient(api_key=KEY, base_url="http://127.0.0.1:9") as client:
        pool = client._session.http._transport._pool  # type: ignore[attr-defined]
        assert pool._keepalive_expiry <= 1.0  # below gunicorn's 2 s, the shortest common default


@pytest.mark.loopback
@pytest.mark.slow
async def test_waiting_for_the_quota_never_writes_to_a_connection_the_server_closed() -> None:
    # 2 requests per 14 s: the second waits about 7 s for its slot, longer than the emulator's
    # (uvicorn's) 5 s keep-alive. Before, it waited on the wire holding a connection the server
    # closed meanwhile: a broken pipe, a retry, a credit counted as possibly charged.
    config = EmulatorConfig(keys={KEY: 100}, limit=None, synth="canned")
    with start_in_thread(config) as server:
        async with clipnormals.AsyncClient(
            api_key=KEY,
            base_url=server.url,
            rate_limit=clipnormals.RateLimit(requests=2, per=14.0),
            max_concurrency=2,
        ) as client:
            items = [item async for item in client.map([prepared(i) for i in range(3)])]
            stats = client.stats
            uncertain = client.credits.uncertain
        served = server.emulator.stats.requests
    assert all(item.ok for item in items), [repr(i.error) for i in items]
    assert (stats.attempts, stats.retries, stats.connection_errors) == (3, 0, 0)
    assert uncertain == 0
    assert served == 3
