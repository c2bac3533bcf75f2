"""Two processes, one quota: clipnormals.AsyncClient with a RedisLimiter in each.

Each process runs a client (max_concurrency 8) over its share of the requests against an
in-process fake server (httpx.MockTransport, lognormal latency, median 3 spacings) that records
when each request arrives. The quota defaults to 60 requests per 6 s (time scaled by 10). Arrival
times are CLOCK_MONOTONIC, which every process on one Linux machine shares, so the parent merges
them and reports: the share of the quota used in the steady state, the largest number of
arrivals in any window of ``per`` (must be <= requests), and how the requests split.

    python benchmarks/redis_limiter.py                          # private redis-server, ~35 s
    python benchmarks/redis_limiter.py --url redis://127.0.0.1:6379/0 --processes 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import httpx  # noqa: E402

import clipnormals  # noqa: E402
from clipnormals.redis import RedisLimiter  # noqa: E402
from tests.fakeapi import max_in_window, normal_map_jpeg, prepared  # noqa: E402

JPEG = normal_map_jpeg(32, 24)


async def worker(url: str, name: str, n: int, rate: str, seed: int) -> list[float]:
    rl = clipnormals.RateLimit.parse(rate)
    rng = random.Random(seed)
    arrivals: list[float] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        arrivals.append(time.monotonic())
        await anyio.sleep(3 * rl.spacing * math.exp(rng.gauss(0.0, 0.6)))
        headers = {"content-type": "image/jpeg", "x-remaining-credits": "1000000"}
        return httpx.Response(200, content=JPEG, headers=headers)

    image = prepared(seed)
    async with (
        RedisLimiter(rl, url=url, name=name) as limiter,
        clipnormals.AsyncClient(
            api_key="bench-key",
            transport=httpx.MockTransport(handle),
            rate_limit=rl,
            limiter=limiter,
            max_concurrency=8,
        ) as client,
    ):
        async for item in client.map([image] * n):
            item.unwrap()
    return arrivals


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("no redis-server on PATH: pass --url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen([*command, "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def run(url: str, processes: int, n: int, rate: str) -> dict[str, object]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    share = n // processes
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", url, name, str(share), rate, str(i)],
            stdout=subprocess.PIPE,
        )
        for i in range(processes)
    ]
    per_process = [json.loads(child.communicate()[0]) for child in children]
    if any(child.returncode for child in children):
        sys.exit("a worker process failed")
    rl = clipnormals.RateLimit.parse(rate)
    merged = sorted(t for arrivals in per_process for t in arrivals)
    steady = merged[rl.requests :]
    achieved = (len(steady) - 1) / (steady[-1] - steady[0])
    return {
        "benchmark": "redis_limiter",
        "rate": rate,
        "processes": processes,
        "requests": len(merged),
        "requests_per_process": [len(a) for a in per_process],
        "fraction_of_quota": round(achieved * rl.per / rl.requests, 4),
        "theoretical_fraction": round(rl.sustained_fraction, 4),
        "max_arrivals_in_any_window": max_in_window(merged, rl.per),
        "quota": rl.requests,
        "cpus": len(os.sched_getaffinity(0)),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, name, n, rate, seed = sys.argv[2:7]
        print(json.dumps(anyio.run(worker, url, name, int(n), rate, int(seed))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a Redis server; default: start a private redis-server")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("-n", type=int, default=300, help="requests in all")
    parser.add_argument("--rate", default="60/6")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/redis_limiter.json")
    args = parser.parse_args()
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(private_redis())
        report = run(url, args.processes, args.n, args.rate)
    print(f"{report['requests']} requests at {args.rate} from {args.processes} processes, ", end="")
    print(f"{time.monotonic() - t0:.0f} s")
    print(f"quota used (steady state): {report['fraction_of_quota']:.2%}", end="")
    print(f" (theory {report['theoretical_fraction']:.2%})")
    print(f"max arrivals in any window: {report['max_arrivals_in_any_window']}/{report['quota']}")
    print(f"requests per process: {report['requests_per_process']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
