"""The emulator served on loopback from a process of its own, with a request log.

``python tests/emulator_process.py '<json>'`` serves ``start_in_thread`` with the admin endpoints
and prints its URL; it stops when its standard input closes. A thin ASGI middleware logs, for
every API request: arrival (``time.monotonic``, which every process of a Linux machine shares),
status, whether it was charged, and the SHA-256 of the uploaded file; ``GET /_test/log`` returns
that log. Its own process keeps the server's clock and CPU apart from the process under test: an
arrival is timed when it arrives, not when a busy interpreter gets round to it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ENDPOINT = "/portrait-surface-normals/v1"
LOG = "/_test/log"
ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    """ASGI middleware: (arrival, status, charged, sha256 of the uploaded file) per request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.log: list[tuple[float, int, bool, str | None]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == LOG:
            body = json.dumps(self.log).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] != "http" or scope["path"] != ENDPOINT:
            await self.app(scope, receive, send)
            return
        arrived = time.monotonic()
        chunks: list[bytes] = []

        async def recording_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def recording_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                names = {k.decode().lower() for k, _ in message["headers"]}
                charged = status == 200 and "x-credits-consumed" in names
                digest = upload_digest(scope, b"".join(chunks))
                self.log.append((arrived, status, charged, digest))
            await send(message)

        await self.app(scope, recording_receive, recording_send)


def upload_digest(scope: Any, body: bytes) -> str | None:
    """The SHA-256 of a multipart body's ``image_file`` part, or None."""
    ctype = dict(scope["headers"]).get(b"content-type", b"").decode()
    if "boundary=" not in ctype:
        return None
    boundary = ctype.split("boundary=", 1)[1].strip('"').encode()
    for part in body.split(b"--" + boundary):
        head, sep, content = part.partition(b"\r\n\r\n")
        if sep and b'name="image_file"' in head:
            return hashlib.sha256(content.removesuffix(b"\r\n")).hexdigest()
    return None


class EmulatorProcess:
    """The child process; a context manager. ``spec``: key, credits, requests, per, latency
    (``[low, high]`` seconds, uniform), and optionally policy (``"sliding"`` by default),
    burst, lognormal (``[median, sigma, maximum]`` seconds, instead of latency) and seed."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, __file__, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self._proc.stdout is not None
        self.url = self._proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"the emulator process did not start (said {self.url!r})")

    def stats(self) -> dict[str, Any]:
        """The emulator's own counters (its admin endpoint)."""
        found: dict[str, Any] = httpx.get(self.url + "/_emulator/stats", timeout=30).json()
        return found

    def log(self) -> list[tuple[float, int, bool, str | None]]:
        rows = httpx.get(self.url + LOG, timeout=30).json()
        return [(float(t), int(s), bool(c), d) for t, s, c, d in rows]

    def stop(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _serve(spec: dict[str, Any]) -> None:
    from clipnormals.emulator import Emulator, EmulatorConfig, Latency, ServerLimit, start_in_thread

    burst = {} if spec.get("burst") is None else {"burst": spec["burst"]}
    lognormal = spec.get("lognormal")
    emulator = Emulator(
        EmulatorConfig(
            keys={spec["key"]: spec["credits"]},
            limit=ServerLimit(
                requests=spec["requests"],
                per=spec["per"],
                policy=spec.get("policy", "sliding"),
                **burst,
            ),
            latency=(
                Latency.lognormal(lognormal[0], lognormal[1], maximum=lognormal[2])
                if lognormal is not None
                else Latency.uniform(*spec["latency"])
            ),
            synth="canned",  # the server's CPU is not under test
            verify_images=False,
            admin=True,
            seed=spec.get("seed", 0),
        )
    )
    emulator.app.add_middleware(Recorder)
    with start_in_thread(emulator) as server:
        print(server.url, flush=True)
        sys.stdin.read()  # until the parent closes it


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
