"""Sustained share of the quota that the client's limiter reaches on an event loop kept busy.

Runs, side by side on one event loop, 600 requests through each of:
  - clipnormals.AsyncClient with its default limiter (reserved slots and an exact start log);
  - the same client with slack=0;
  - the same client with strict spacing (no two starts closer than one spacing);
  - the limiter as it was before slots were reserved: an aiolimiter bucket of capacity
    1 + slack (lateness beyond slack is lost for good), for comparison;
at 60 requests per 6 s (time scaled by 10; spacing ~100 ms, far above timer jitter), against an
in-process fake server (httpx.MockTransport) with lognormal latency (median 3 spacings). A
background task keeps the loop busy, as the caller's own work would:

- ``--mode mild`` (default): 1-3 ms blocking bursts every 5 ms;
- ``--mode busy``: blocking bursts of half to one whole spacing (50-102 ms), 5 ms apart: the
  loop is blocked ~93% of the time and every wake-up can come up to a spacing late.

Prints, for each: sustained fraction of the quota (steady state, first 60 starts excluded), the
largest number of starts seen in any 6 s window (must be <= 60), the smallest span of 61
starts beyond the window (the margin left for arrival jitter), and the mean timer lateness.

    python benchmarks/limiter.py               # about 65 s
    python benchmarks/limiter.py --mode busy   # about 65 s
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import random
import sys
import time
from pathlib import Path

import anyio
import httpx
from aiolimiter import AsyncLimiter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clipnormals
import clipnormals.images
from tests.fakeapi import max_in_window, normal_map_jpeg

JPEG = normal_map_jpeg(32, 24)


def server(starts: list[float], median: float, rng: random.Random) -> httpx.MockTransport:
    async def handle(request: httpx.Request) -> httpx.Response:
        starts.append(time.monotonic())
        await anyio.sleep(median * math.exp(rng.gauss(0.0, 0.6)))
        return httpx.Response(
            200,
            content=JPEG,
            headers={"content-type": "image/jpeg", "x-remaining-credits": "1000000"},
        )

    return httpx.MockTransport(handle)


class BucketLimiter:
    """The limiter before reserved slots: an aiolimiter bucket of capacity ``burst + slack``
    refilled at the sustained rate, plus the shared cooldown (a :class:`clipnormals.Limiter`)."""

    def __init__(self, rate_limit: clipnormals.RateLimit) -> None:
        self.rate_limit = rate_limit
        self._bucket = AsyncLimiter(rate_limit.capacity, rate_limit.capacity / rate_limit.rate)
        self._cooldown_until = -math.inf

    async def acquire(self) -> float:
        while True:
            wait = self._cooldown_until - anyio.current_time()
            if wait > 0:
                await anyio.sleep(wait)
                continue
            seen = self._cooldown_until
            await self._bucket.acquire()
            if self._cooldown_until == seen:
                return anyio.current_time()

    async def rate_limited(
        self, *, started: float, pause: float, retry_after: float | None = None
    ) -> None:
        self._cooldown_until = max(self._cooldown_until, anyio.current_time() + pause)

    async def admitted(self, *, started: float) -> None:
        pass

    @property
    def learned(self) -> clipnormals.RateLimit | None:
        return None


async def busy_loop(stop: anyio.Event, lateness: list[float], block: tuple[float, float]) -> None:
    rng = random.Random(5)
    while not stop.is_set():
        planned = 0.005
        t0 = time.monotonic()
        await anyio.sleep(planned)
        lateness.append(time.monotonic() - t0 - planned)
        time.sleep(rng.uniform(*block))  # noqa: ASYNC251 - the point: block the loop


SAMPLE = Path(__file__).resolve().parents[1] / "clipnormals/samples/camera.png"


async def run(n: int, requests: int, per: float, mode: str) -> dict[str, dict[str, float]]:
    image = clipnormals.images.prepare_image(SAMPLE.read_bytes())
    rl = clipnormals.RateLimit(requests=requests, per=per)
    variants: dict[str, tuple[clipnormals.RateLimit, clipnormals.Limiter | None]] = {
        "clipnormals (default)": (rl, None),
        "clipnormals, slack 0": (
            clipnormals.RateLimit(requests=requests, per=per, slack=0.0),
            None,
        ),
        "clipnormals, strict": (
            clipnormals.RateLimit(requests=requests, per=per, strict=True),
            None,
        ),
        "bucket (before)": (rl, BucketLimiter(rl)),
    }
    starts: dict[str, list[float]] = {name: [] for name in variants}
    lateness: list[float] = []
    stop = anyio.Event()
    spacing = per / requests
    block = (0.001, 0.003) if mode == "mild" else (0.5 * rl.spacing, rl.spacing)

    async def one(
        name: str, limit: clipnormals.RateLimit, limiter: clipnormals.Limiter | None
    ) -> None:
        async with clipnormals.AsyncClient(
            api_key="bench-key",
            transport=server(starts[name], 3 * spacing, random.Random(11)),
            rate_limit=limit,
            limiter=limiter,
        ) as client:
            async for item in client.map([image] * n):
                item.unwrap()

    async with anyio.create_task_group() as tg:
        tg.start_soon(busy_loop, stop, lateness, block)
        async with anyio.create_task_group() as inner:
            for name, (limit, limiter) in variants.items():
                inner.start_soon(one, name, limit, limiter)
        stop.set()

    report: dict[str, dict[str, float]] = {}
    for name, (limit, _) in variants.items():
        s = sorted(starts[name])
        steady = s[requests:]
        rate = (len(steady) - 1) / (steady[-1] - steady[0])
        report[name] = {
            "fraction_of_quota": rate * per / requests,
            "theoretical_fraction": limit.sustained_fraction,
            "max_starts_in_any_window": max_in_window(s, per),
            "min_span_of_quota_plus_one_beyond_window_ms": 1000
            * (min(b - a for a, b in zip(s, s[requests:], strict=False)) - per),
            "min_gap_ms": 1000 * min(b - a for a, b in itertools.pairwise(s)),
            "requests": len(s),
        }
    report["loop"] = {
        "mean_timer_lateness_ms": 1000 * sum(lateness) / max(len(lateness), 1),
        "max_timer_lateness_ms": 1000 * max(lateness, default=0.0),
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", type=int, default=600)
    parser.add_argument("--rate", default="60/6")
    parser.add_argument("--mode", choices=("mild", "busy"), default="mild")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rl = clipnormals.RateLimit.parse(args.rate)
    t0 = time.monotonic()
    report = asyncio.run(run(args.n, rl.requests, rl.per, args.mode))
    print(f"{args.n} requests at {args.rate}, {args.mode} loop, {time.monotonic() - t0:.0f} s\n")
    print(
        f"{'limiter':24} {'quota used':>11} {'theory':>8} {'max/window':>11}"
        f" {'61 span - window':>17} {'min gap':>8}"
    )
    for name, r in report.items():
        if name == "loop":
            continue
        print(
            f"{name:24} {r['fraction_of_quota']:>10.2%} {r['theoretical_fraction']:>8.2%} "
            f"{int(r['max_starts_in_any_window']):>7}/{rl.requests}"
            f" {r['min_span_of_quota_plus_one_beyond_window_ms']:>14.1f} ms"
            f" {r['min_gap_ms']:>5.1f} ms"
        )
    loop = report["loop"]
    print(
        f"\ntimer lateness on the loop: mean {loop['mean_timer_lateness_ms']:.2f} ms,"
        f" max {loop['max_timer_lateness_ms']:.1f} ms (spacing {rl.spacing * 1000:.0f} ms)"
    )
    path = args.json or Path(
        "benchmarks/results/limiter.json"
        if args.mode == "mild"
        else "benchmarks/results/limiter-busy.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mode": args.mode, "rate": args.rate, **report}, indent=2) + "\n")


if __name__ == "__main__":
    main()
