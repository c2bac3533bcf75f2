"""Real, independently written rate limiters (nginx, HAProxy) in front of the emulator, on
loopback, for the tests in this folder and for ``benchmarks/saturation.py``.

Each server gets its configuration written to a fresh temporary folder, listens on a free
loopback port, runs in the foreground as a child process and is stopped by its PID. The emulator
behind them runs in its own process (``python -m clipnormals emulator``), without a limit of its
own: the proxy in front is the only limiter.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx

KEY = "sk-limiter-test-7c1e"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
)
_LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)  # waiting for a server to come up, not timing anything
    return False


def _stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def emulator(latency: str = "lognormal:0.05,0.5") -> Iterator[str]:
    """The emulator on a free loopback port, in its own process, with no limit of its own."""
    command = [sys.executable, "-m", "clipnormals", "emulator", "--port", "0", "--rate", "none"]
    command += ["--keys", f"{KEY}:100000000", "--latency", latency, "--log-level", "warning"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = _LISTENING.search(line)
        if match is None:
            raise RuntimeError(f"the emulator did not start (said {line!r})")
        yield match.group(1)
    finally:
        _stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass(frozen=True, slots=True)
class Proxy:
    """A running proxy: its URL and the file where it logs what it refused."""

    url: str
    log: Path
    kind: str

    def refused(self) -> int:
        """429s the proxy sent, from its own log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        if self.kind == "nginx":
            return text.count("limiting requests")
        return len(re.findall(r" 429 ", text))


_NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_body_buffer_size 1m;
    client_max_body_size 40m;
    limit_req_zone $http_x_api_key zone=perkey:1m rate={rate}r/s;
    limit_req_status 429;
    limit_req_log_level warn;
    upstream emulator {{ server {upstream}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            limit_req zone=perkey{burst};
            proxy_pass http://emulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

_HAPROXY_CONF = """
global
    maxconn 512
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    log stdout format raw local0
frontend api
    bind 127.0.0.1:{port}
    log global
    option httplog
    stick-table type string len 64 size 1k expire 120s store http_req_rate({per}s)
    http-request track-sc0 req.hdr(x-api-key)
    http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {requests} }}
    default_backend emulator
backend emulator
    server e1 {upstream}
"""


@contextlib.contextmanager
def _serve(kind: str, command: list[str], folder: Path, port: int, log: Path) -> Iterator[Proxy]:
    with open(folder / "stdout.log", "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=folder)
        try:
            if not _wait_for_port(port, proc):
                output = (folder / "stdout.log").read_text(errors="replace")
                raise RuntimeError(f"{kind} did not start on port {port}: {output[-2000:]}")
            yield Proxy(url=f"http://127.0.0.1:{port}", log=log, kind=kind)
        finally:
            _stop(proc)


@contextlib.contextmanager
def nginx(upstream: str, *, rate: int, burst: int | None, nodelay: bool = True) -> Iterator[Proxy]:
    """nginx ``limit_req`` per API key (``rate`` r/s, ``burst``, ``nodelay``) before upstream."""
    if NGINX is None:
        raise RuntimeError("nginx is not installed")
    with tempfile.TemporaryDirectory(prefix="clipnormals-nginx-") as tmp:
        folder = Path(tmp)
        port = free_port()
        clause = "" if burst is None else f" burst={burst}" + (" nodelay" if nodelay else "")
        upstream = upstream.removeprefix("http://")
        conf = _NGINX_CONF.format(dir=folder, rate=rate, upstream=upstream, port=port, burst=clause)
        (folder / "nginx.conf").write_text(conf)
        command = [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", "stderr"]
        with _serve("nginx", command, folder, port, folder / "error.log") as proxy:
            yield proxy


@contextlib.contextmanager
def haproxy(upstream: str, *, requests: int, per: int) -> Iterator[Proxy]:
    """HAProxy denying with 429 when a key's ``http_req_rate(per s)`` exceeds ``requests``."""
    if HAPROXY is None:
        raise RuntimeError("haproxy is not installed")
    with tempfile.TemporaryDirectory(prefix="clipnormals-haproxy-") as tmp:
        folder = Path(tmp)
        port = free_port()
        conf = _HAPROXY_CONF.format(
            port=port, per=per, requests=requests, upstream=upstream.removeprefix("http://")
        )
        (folder / "haproxy.cfg").write_text(conf)
        command = [HAPROXY, "-db", "-f", str(folder / "haproxy.cfg")]
        with _serve("haproxy", command, folder, port, folder / "stdout.log") as proxy:
            yield proxy


class SlowToTheWire(httpx.AsyncHTTPTransport):
    """httpx's own transport, with 0 to ``most`` seconds (uniform) between receiving a request
    and sending it, as a connection or TLS set-up or a busy event loop would add."""

    def __init__(self, most: float, *, seed: int = 0) -> None:
        super().__init__()
        self._most = most
        self._rng = random.Random(seed)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await anyio.sleep(self._rng.uniform(0.0, self._most))
        return await super().handle_async_request(request)


class SlowToTheWireWrapped(httpx.AsyncBaseTransport):
    """The same delay in a wrapper the client cannot see through: it takes its slots before
    handing requests over (how every request was sent before slots were taken on the wire)."""

    def __init__(self, most: float, *, seed: int = 0) -> None:
        self._inner = SlowToTheWire(most, seed=seed)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
