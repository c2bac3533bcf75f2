"""A hand-written stand-in for the API, for unit tests through ``httpx.MockTransport``.

It is deliberately independent of ``clipnormals.emulator``: the client's unit tests must not
pass merely because the client and the emulator share a misunderstanding. The server-side rate
limiters are written out here from their textbook definitions.
"""

from __future__ import annotations

import io
import json
import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import anyio
import httpx
import numpy as np
from PIL import Image

from clipnormals import PreparedImage, prepare_image

KEY = "sk-test-5f1d2c3b4a"


class FixedWindow:
    """Counts per calendar window ``[k*per, (k+1)*per)``."""

    def __init__(self, requests: int, per: float) -> None:
        self.requests, self.per = requests, per
        self.window, self.count = -1, 0

    def allow(self, now: float) -> bool:
        window = math.floor(now / self.per)
        if window != self.window:
            self.window, self.count = window, 0
        if self.count >= self.requests:
            return False
        self.count += 1
        return True


class SlidingWindow:
    """Sliding log: at most ``requests`` accepted arrivals in any window ``(now - per, now]``...
    and, to be strict, counting a request exactly ``per`` seconds old as still inside."""

    def __init__(self, requests: int, per: float) -> None:
        self.requests, self.per = requests, per
        self.log: deque[float] = deque()

    def allow(self, now: float) -> bool:
        while self.log and self.log[0] < now - self.per:
            self.log.popleft()
        if len(self.log) >= self.requests:
            return False
        self.log.append(now)
        return True


class TokenBucket:
    """Starts full with ``requests`` tokens, refills at ``requests / per``."""

    def __init__(self, requests: int, per: float) -> None:
        self.capacity, self.rate = float(requests), requests / per
        self.tokens, self.last = float(requests), 0.0

    def allow(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class NginxBucket:
    """nginx ``limit_req rate=requests/per burst=burst nodelay``: leaky bucket of excess."""

    def __init__(self, requests: int, per: float, burst: int = 5) -> None:
        self.rate, self.burst = requests / per, burst
        self.excess, self.last = 0.0, None  # type: ignore[assignment]

    def allow(self, now: float) -> bool:
        excess = 0.0 if self.last is None else max(0.0, self.excess - (now - self.last) * self.rate)
        if excess > self.burst:
            return False
        self.excess, self.last = excess + 1, now
        return True


POLICIES: dict[str, Callable[[int, float], object]] = {
    "fixed": FixedWindow,
    "sliding": SlidingWindow,
    "token": TokenBucket,
    "nginx": lambda r, p: NginxBucket(r, p, burst=3),
}


def max_in_window(times: Iterable[float], per: float) -> int:
    """The largest number of ``times`` inside any closed window of length ``per``."""
    ts = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ts):
        while t - ts[lo] > per:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def normal_map_jpeg(width: int, height: int, quality: int = 90) -> bytes:
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[...] = (128, 128, 255)
    rgb[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = (160, 150, 230)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(width: int = 32, height: int = 24, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def prepared(seed: int = 0) -> PreparedImage:
    """An image prepared up front: the client then needs no worker thread for it, which keeps
    virtual-time tests exact (virtual time would run ahead while a thread computes)."""
    return prepare_image(png_bytes(seed=seed))


def error(status: int, message: str, **headers: str) -> httpx.Response:
    return httpx.Response(
        status,
        content=json.dumps({"error": message}).encode(),
        headers={"content-type": "application/json", **headers},
    )


Script = Callable[[httpx.Request, "FakeAPI"], "httpx.Response | None"]


@dataclass
class FakeAPI:
    """The API's contract, simplified, with a server-side limiter and a credit balance.

    ``script`` entries, consumed one per arrival, override the normal answer: a Response, an
    exception instance to raise (a dropped connection), or None for the normal answer.
    """

    credits: int | None = 1000
    policy: str | None = None
    requests: int = 60
    per: float = 60.0
    latency: Callable[[], float] = lambda: 0.0
    script: list[httpx.Response | Exception | None] = field(default_factory=list)
    report_balance: bool = True
    report_cost: bool = True  # False: an older API version, x-remaining-credits only
    cost: int = 1
    arrivals: list[float] = field(default_factory=list)
    accepted: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    charged: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[bytes] = field(default_factory=list)
    headers_seen: list[httpx.Headers] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.limiter = POLICIES[self.policy](self.requests, self.per) if self.policy else None

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        now = anyio.current_time()
        self.arrivals.append(now)
        self.headers_seen.append(request.headers)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = await self._answer(request, now)
        finally:
            self.in_flight -= 1
        self.statuses.append(response.status_code)
        return response

    async def _answer(self, request: httpx.Request, now: float) -> httpx.Response:
        if self.script:
            scripted = self.script.pop(0)
            if isinstance(scripted, Exception):
                raise scripted
            if scripted is not None:
                return scripted
        key = request.headers.get("x-api-key")
        if not key:
            return error(401, "No api key provided")
        if key != KEY:
            return error(403, "Invalid api key")
        if self.limiter is not None and not self.limiter.allow(now):  # type: ignore[attr-defined]
            return error(429, "Too many requests")
        self.accepted.append(now)
        body = request.read()
        self.bodies.append(body)
        if b'name="image_file"' not in body:
            return error(400, "image_file is required")
        if self.credits is not None and self.credits < self.cost:
            return error(402, "Not enough credits")
        delay = self.latency()
        if delay:
            await anyio.sleep(delay)
        headers = {"content-type": "image/jpeg"}
        if self.credits is not None:
            self.credits -= self.cost
            if self.report_balance:
                headers["x-remaining-credits"] = str(self.credits)
        if self.report_cost:
            headers["x-credits-consumed"] = str(self.cost)
        self.charged += self.cost
        return httpx.Response(200, content=_JPEG, headers=headers)


_JPEG = normal_map_jpeg(32, 24)


def lognormal(median: float, sigma: float, seed: int = 1) -> Callable[[], float]:
    rng = random.Random(seed)
    return lambda: median * math.exp(rng.gauss(0.0, sigma))
