"""Sustained share of the quota that the client's limiter reaches on a busy event loop.

Runs, side by side on one event loop, 600 requests through each of:
  - clipnormals.AsyncClient with its default limiter (capacity 1 + slack, the ideal schedule kept);
  - the same client with slack=0 (a textbook bucket of capacity 1: every late wake-up is lost);
at 60 requests per 6 s (time scaled by 10; spacing ~100 ms, far above timer jitter), against an
in-process fake server (httpx.MockTransport) with lognormal latency (median 3 spacings). A
background task keeps the loop busy with 1-3 ms blocking bursts, as a real application would.

Prints, for each: sustained fraction of the quota (steady state, first 60 starts excluded), the
largest number of starts seen in any 6 s window (must be <= 60), and the mean timer lateness.

    python benchmarks/limiter.py            # about 65 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from pathlib import Path

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clipnormals
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


async def busy_loop(stop: anyio.Event, lateness: list[float]) -> None:
    rng = random.Random(5)
    while not stop.is_set():
        planned = 0.005
        t0 = time.monotonic()
        await anyio.sleep(planned)
        lateness.append(time.monotonic() - t0 - planned)
        time.sleep(rng.uniform(0.001, 0.003))  # noqa: ASYNC251 - the point: block the loop


SAMPLE = Path(__file__).resolve().parents[1] / "clipnormals/samples/camera.png"


async def run(n: int, requests: int, per: float) -> dict[str, dict[str, float]]:
    image = clipnormals.prepare_image(SAMPLE.read_bytes())
    variants = {
        "clipnormals (slack 0.1)": clipnormals.RateLimit(requests=requests, per=per),
        "textbook bucket (slack 0)": clipnormals.RateLimit(requests=requests, per=per, slack=0.0),
    }
    starts: dict[str, list[float]] = {name: [] for name in variants}
    lateness: list[float] = []
    stop = anyio.Event()
    spacing = per / requests

    async def one(name: str, rl: clipnormals.RateLimit) -> None:
        async with clipnormals.AsyncClient(
            api_key="bench-key",
            transport=server(starts[name], 3 * spacing, random.Random(11)),
            rate_limit=rl,
        ) as client:
            async for item in client.map([image] * n):
                item.unwrap()

    async with anyio.create_task_group() as tg:
        tg.start_soon(busy_loop, stop, lateness)
        async with anyio.create_task_group() as inner:
            for name, rl in variants.items():
                inner.start_soon(one, name, rl)
        stop.set()

    report: dict[str, dict[str, float]] = {}
    for name, rl in variants.items():
        s = sorted(starts[name])
        steady = s[requests:]
        rate = (len(steady) - 1) / (steady[-1] - steady[0])
        report[name] = {
            "fraction_of_quota": rate * per / requests,
            "theoretical_fraction": rl.sustained_fraction,
            "max_starts_in_any_window": max_in_window(s, per),
            "requests": len(s),
        }
    report["loop"] = {"mean_timer_lateness_ms": 1000 * sum(lateness) / max(len(lateness), 1)}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=600)
    parser.add_argument("--rate", default="60/6")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/limiter.json"))
    args = parser.parse_args()
    rl = clipnormals.RateLimit.parse(args.rate)
    t0 = time.monotonic()
    report = asyncio.run(run(args.n, rl.requests, rl.per))
    print(f"{args.n} requests at {args.rate} on a busy loop, {time.monotonic() - t0:.0f} s\n")
    print(f"{'limiter':28} {'quota used':>11} {'theory':>8} {'max/window':>11}")
    for name, r in report.items():
        if name == "loop":
            continue
        print(
            f"{name:28} {r['fraction_of_quota']:>10.2%} {r['theoretical_fraction']:>8.2%} "
            f"{int(r['max_starts_in_any_window']):>7}/{rl.requests}"
        )
    print(f"\nmean timer lateness on the loop: {report['loop']['mean_timer_lateness_ms']:.2f} ms")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
