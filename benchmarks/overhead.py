"""Client overhead: requests per second and CPU per request of ``client.map`` against a bare
``httpx.AsyncClient`` loop, same concurrency, same payloads, same server.

The emulator runs in its own process on loopback (canned 64x64 maps, no latency, no rate limit,
uploads not decoded) so that its CPU time is not charged to the client; the client's limiter is
set far above what the machine can do. Three ways, alternated round by round so that a busy
machine slows them alike:

- ``bare httpx``: a task per request, at most ``concurrency`` in flight through a semaphore,
  each posting the multipart upload and reading the body, status checked (the reference);
- ``bare httpx (workers)``: the same requests from ``concurrency`` tasks that pull from one
  shared iterator; httpx's connection pool does less work per request this way (it checks
  every idle connection each time it hands one out), so this is the leanest plain loop;
- ``client.map``: ``AsyncClient.map`` over the same image bytes (each one sniffed and checked in
  a worker thread, credit-tracked, rate-limited, retried on failure, the response checked);
- ``client.map (prepared)``: the same over ``PreparedImage`` objects made beforehand, which is
  what the batch runner hands the client: the request path alone.

Prints requests per second (median of the rounds), process CPU per request (``time.process_time``
of this process, worker threads included) and the ratio to the bare loop; the emulator's own CPU
per request shows whether the server was the bottleneck.

    python benchmarks/overhead.py               # about a minute
    python benchmarks/overhead.py --quick

Writes ``benchmarks/results/overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio
import httpx
from _common import (
    RESULTS,
    EmulatorProcess,
    ServerSpec,
    machine,
    shown,
    small_png,
    write_json,
)

import clipnormals
import clipnormals.images

ENDPOINT = "/portrait-surface-normals/v1"
KEY = "bench-overhead"
TARGET_RATIO = 0.9


def payloads(n: int, distinct: Sequence[bytes]) -> Iterator[bytes]:
    for i in range(n):
        yield distinct[i % len(distinct)]


# Tests hand the bare loops an ``httpx.MockTransport`` here; the benchmark never does.
TRANSPORT: httpx.AsyncBaseTransport | None = None


def _http(url: str, concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0, transport=TRANSPORT)


async def _post(http: httpx.AsyncClient, data: bytes) -> bool:
    """One upload as both bare loops make it; the body is read like the client reads it.

    Returns whether it succeeded. A bare loop has no retries: a transient failure (a 5xx or
    429, a reset connection, a timeout) is counted as a failed request, never raised, so that
    one blip of the server or the machine does not end the whole benchmark.
    """
    try:
        response = await http.post(
            ENDPOINT,
            headers={"x-api-key": KEY},
            files={"image_file": ("portrait.png", data, "image/png")},
        )
        _ = response.content
    except httpx.TransportError:
        return False
    return response.status_code == 200


async def bare(url: str, images: Iterator[Any], concurrency: int) -> int:
    done = 0
    slots = anyio.Semaphore(concurrency)
    async with _http(url, concurrency) as http:

        async def one(data: bytes) -> None:
            nonlocal done
            try:
                ok = await _post(http, data)  # not ``done += await``: that reads done first
                done += ok
            finally:
                slots.release()

        async with anyio.create_task_group() as tg:
            for data in images:
                await slots.acquire()
                tg.start_soon(one, data)
    return done


async def workers(url: str, images: Iterator[Any], concurrency: int) -> int:
    """The leanest plain loop: ``concurrency`` tasks pulling from one shared iterator."""
    done = 0
    async with _http(url, concurrency) as http:

        async def worker() -> None:
            nonlocal done
            for data in images:
                ok = await _post(http, data)  # not ``done += await``: that reads done first
                done += ok

        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
    return done


async def ours(url: str, images: Iterator[Any], concurrency: int) -> int:
    done = 0
    async with clipnormals.AsyncClient(
        api_key=KEY,
        base_url=url,
        rate_limit=clipnormals.RateLimit(requests=1_000_000, per=1.0),
        max_concurrency=concurrency,
    ) as client:
        async for item in client.map(images):
            # The client retries transient failures itself; what is left failed for good.
            done += item.error is None
    return done


Way = Callable[[str, Iterator[Any], int], Coroutine[Any, Any, int]]


def timed(way: Way, url: str, images: Iterator[Any], n: int, concurrency: int) -> dict[str, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    done = asyncio.run(way(url, images, concurrency))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    # Rates count every request sent, failed ones included (each cost the client its CPU);
    # the failures are reported beside them.
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "req_per_s": n / wall,
        "cpu_ms_per_req": 1000 * cpu / n,
        "failed": n - done,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("-n", type=int, default=None, help="requests per round (default 3000)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="500 requests, 2 rounds")
    parser.add_argument(
        "--emulator-runner",
        action="store_true",
        help="serve with the emulator's own serve() instead of uvicorn on a TCP_NODELAY socket",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "overhead.json")
    args = parser.parse_args(argv)
    n = args.n or (500 if args.quick else 3000)
    rounds = args.rounds or (2 if args.quick else 5)
    distinct = [small_png(i) for i in range(32)]
    prepared = [clipnormals.images.prepare_image(d) for d in distinct]
    spec = ServerSpec(
        requests=None,
        synth="canned",
        verify_images=False,
        trace=False,
        runner="emulator" if args.emulator_runner else "socket",
    )
    ways: dict[str, tuple[Way, Sequence[Any]]] = {
        "bare httpx": (bare, distinct),
        "bare httpx (workers)": (workers, distinct),
        "client.map": (ours, distinct),
        "client.map (prepared)": (ours, prepared),
    }
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in ways}
    server_cpu: dict[str, list[float]] = {name: [] for name in ways}
    print(f"{n} requests per round, {rounds} rounds, concurrency {args.concurrency}")
    with EmulatorProcess(spec, key=KEY) as server:
        for way, source in ways.values():  # warm up: imports, connections, caches
            timed(way, server.url, payloads(100, source), 100, args.concurrency)
        for _ in range(rounds):
            for name, (way, source) in ways.items():
                before = server.trace().server_cpu_s
                samples[name].append(
                    timed(way, server.url, payloads(n, source), n, args.concurrency)
                )
                server_cpu[name].append(1000 * (server.trace().server_cpu_s - before) / n)
    rows: dict[str, dict[str, Any]] = {}
    for name, runs in samples.items():
        rows[name] = {
            "req_per_s": statistics.median(r["req_per_s"] for r in runs),
            "cpu_ms_per_req": statistics.median(r["cpu_ms_per_req"] for r in runs),
            "server_cpu_ms_per_req": statistics.median(server_cpu[name]),
            "req_per_s_rounds": [round(r["req_per_s"], 1) for r in runs],
            "failed": int(sum(r["failed"] for r in runs)),
        }
    base = rows["bare httpx"]
    print(
        f"\n{'':22} {'req/s':>8} {'ratio':>6} {'client CPU/req':>15} {'CPU ratio':>9}"
        f" {'server CPU/req':>15}"
    )
    for name, r in rows.items():
        r["ratio"] = r["req_per_s"] / base["req_per_s"]
        r["cpu_ratio"] = r["cpu_ms_per_req"] / base["cpu_ms_per_req"]
        print(
            f"{name:22} {r['req_per_s']:>8.0f} {r['ratio']:>6.2f} {r['cpu_ms_per_req']:>12.2f} ms"
            f" {r['cpu_ratio']:>8.2f}x {r['server_cpu_ms_per_req']:>12.2f} ms"
        )
    for name, r in rows.items():
        if r["failed"]:
            print(f"warning: {name}: {r['failed']} requests failed over the rounds")
    ratio = rows["client.map"]["ratio"]
    lean = rows["bare httpx (workers)"]["req_per_s"]
    verdict = (
        f"client.map reaches {ratio:.2f} of the bare loop's rate: target "
        f"{'met' if ratio >= TARGET_RATIO else 'MISSED'} (>= {TARGET_RATIO}); "
        f"{rows['client.map']['req_per_s'] / lean:.2f} of the worker-pool loop's; on prepared "
        f"images {rows['client.map (prepared)']['ratio']:.2f} and "
        f"{rows['client.map (prepared)']['req_per_s'] / lean:.2f}"
    )
    print("\n" + verdict)
    report = {
        "benchmark": "overhead",
        "machine": machine(),
        "command": " ".join(["python benchmarks/overhead.py", *(argv or sys.argv[1:])]),
        "requests_per_round": n,
        "rounds": rounds,
        "concurrency": args.concurrency,
        "server_runner": spec.runner,
        "payload_bytes": round(statistics.mean(len(d) for d in distinct)),
        "verdict": verdict,
        "results": rows,
    }
    write_json(args.output, report)
    print(f"written {shown(args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
