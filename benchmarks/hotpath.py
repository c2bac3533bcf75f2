"""The client's request path without a network: CPU per request and where it goes.

Run from the repository root::

    python benchmarks/hotpath.py                    # CPU per request, 5 rounds of 2,000
    python benchmarks/hotpath.py --profile          # and a cProfile of each way

Every request is answered by an ``httpx.MockTransport`` in this process (a canned 64x64 JPEG
with the API's credit headers), so there is no socket, no server and no connection pool: what
is measured is the client's own CPU. Ways, alternated round by round:

- ``bare (workers)``: 16 tasks pulling from one iterator, each posting the multipart upload with
  ``httpx.AsyncClient`` and reading the body, status checked (the lean plain loop);
- ``bare (task per request)``: a task per request behind a semaphore of 16;
- ``bare (workers) + check``: the worker loop, each image decoded by Pillow before it is sent
  (``Image.open(...).load()``: the least check that refuses a file that cannot be decoded), on
  the event loop like the client's preparation of such small images;
- ``client.map``: ``AsyncClient.map`` over the same PNG bytes (each validated before upload);
- ``client.map (prepared)``: the same over ``PreparedImage`` objects made beforehand.

With ``--profile`` each way runs once more under cProfile; the functions with the most time of
their own are printed, then the inclusive time of the steps the client adds to a request.
Writes ``benchmarks/results/hotpath.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import io
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio
import httpx
from _common import RESULTS, machine, shown, small_png, write_json
from PIL import Image

import clipnormals
import clipnormals.images

KEY = "bench-hotpath"
ENDPOINT = "/portrait-surface-normals/v1"
CONCURRENCY = 16


def _canned_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 255)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


JPEG = _canned_jpeg()


def _transport() -> httpx.MockTransport:
    remaining = iter(range(10**9, 0, -1))

    def handler(request: httpx.Request) -> httpx.Response:
        _ = request.content
        return httpx.Response(
            200,
            content=JPEG,
            headers={
                "content-type": "image/jpeg",
                "x-remaining-credits": str(next(remaining)),
                "x-credits-consumed": "1",
            },
        )

    return httpx.MockTransport(handler)


def _http() -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url="http://127.0.0.1:9", transport=_transport())


async def _post(http: httpx.AsyncClient, data: bytes) -> bool:
    response = await http.post(
        ENDPOINT,
        headers={"x-api-key": KEY},
        files={"image_file": ("portrait.png", data, "image/png")},
    )
    _ = response.content
    return response.status_code == 200


async def workers(images: Iterator[Any], *, check: bool = False) -> int:
    """The lean worker loop; with ``check``, each image is first checked the way a careful
    caller would (Pillow opens and decodes it: a file that cannot be decoded is not sent)."""
    done = 0
    async with _http() as http:

        async def worker() -> None:
            nonlocal done
            for data in images:
                if check:
                    with Image.open(io.BytesIO(data)) as image:
                        image.load()
                ok = await _post(http, data)
                done += ok

        async with anyio.create_task_group() as tg:
            for _ in range(CONCURRENCY):
                tg.start_soon(worker)
    return done


async def per_task(images: Iterator[Any]) -> int:
    done = 0
    slots = anyio.Semaphore(CONCURRENCY)
    async with _http() as http:

        async def one(data: bytes) -> None:
            nonlocal done
            try:
                ok = await _post(http, data)
                done += ok
            finally:
                slots.release()

        async with anyio.create_task_group() as tg:
            for data in images:
                await slots.acquire()
                tg.start_soon(one, data)
    return done


async def ours(images: Iterator[Any]) -> int:
    done = 0
    async with clipnormals.AsyncClient(
        api_key=KEY,
        base_url="http://127.0.0.1:9",
        rate_limit=clipnormals.RateLimit(requests=1_000_000, per=1.0),
        max_concurrency=CONCURRENCY,
        transport=_transport(),
    ) as client:
        async for item in client.map(images):
            done += item.error is None
    return done


Way = Callable[[Iterator[Any]], Coroutine[Any, Any, int]]


def _images(n: int, source: Sequence[Any]) -> Iterator[Any]:
    return (source[i % len(source)] for i in range(n))


def timed(way: Way, source: Sequence[Any], n: int) -> float:
    """CPU milliseconds per request (this process, worker threads included)."""
    cpu0 = time.process_time()
    done = asyncio.run(way(_images(n, source)))
    cpu = time.process_time() - cpu0
    if done != n:
        print(f"warning: {n - done} of {n} requests failed")
    return 1000 * cpu / n


# The steps the client adds to a request, found by name in the profile (inclusive time).
STEPS = {
    "preparation in a worker thread (anyio.to_thread.run_sync)": ("to_thread.py", "run_sync"),
    "telemetry: the image span (Telemetry.image)": ("telemetry.py", "image"),
    "map: memory object stream send": ("memory.py", "send"),
    "prepare_image (the check itself)": ("prepare.py", "prepare_image"),
    "answer checked (header read once): Session._check_image": ("session.py", "_check_image"),
    "answer read again: NormalMap._read_header": ("normalmap.py", "_read_header"),
    "Image.open (all callers)": ("Image.py", "open"),
    "credit headers: parse_credit_header": ("credits.py", "parse_credit_header"),
    "retry loop: RetryPolicy.retrying": ("retry.py", "retrying"),
    "retry loop: tenacity AsyncRetrying.__init__": ("asyncio/__init__.py", "__init__"),
    "tenacity AsyncRetrying.__iter__ / __anext__": ("asyncio/__init__.py", "__anext__"),
    "limiter: LocalLimiter.acquire": ("limiter.py", "acquire"),
    "httpx AsyncClient.send": ("_client.py", "send"),
    "multipart encoding (httpx _multipart)": ("_multipart.py", "__init__"),
}


def profile(way: Way, source: Sequence[Any], n: int, top: int) -> dict[str, Any]:
    # CPU time of the event loop's thread, so that waiting in epoll counts for nothing; work in
    # worker threads is invisible to cProfile and is given as one figure.
    profiler = cProfile.Profile(time.thread_time)
    cpu0, main0 = time.process_time(), time.thread_time()
    profiler.enable()
    asyncio.run(way(_images(n, source)))
    profiler.disable()
    other_threads = (time.process_time() - cpu0) - (time.thread_time() - main0)
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows: list[tuple[str, float, float]] = []
    for (filename, line, func), (_cc, _nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((f"{Path(filename).name}:{line}({func})", tt, ct))
    own = sorted(rows, key=lambda r: -r[1])[:top]
    steps = {}
    for label, (file_end, func) in STEPS.items():
        ct = sum(
            ct
            for (filename, _line, f), (_cc, _nc, _tt, ct, _c) in stats.stats.items()  # type: ignore[attr-defined]
            if f == func and filename.endswith(file_end)
        )
        if ct:
            steps[label] = ct
    print(
        f"  profiled: {1000 * total / n:.3f} ms per request on the loop's thread (cProfile"
        f" inflates every call), {1000 * other_threads / n:.3f} ms in worker threads"
    )
    for name, tt, _ in own:
        print(f"    {100 * tt / total:5.1f}% own  {1000 * tt / n:6.3f} ms  {name}")
    for label, ct in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"    {100 * ct / total:5.1f}% incl {1000 * ct / n:6.3f} ms  {label}")
    return {
        "profiled_ms_per_request": 1000 * total / n,
        "worker_threads_ms_per_request": 1000 * other_threads / n,
        "own": [{"function": f, "share": round(tt / total, 4)} for f, tt, _ in own],
        "steps": {label: round(ct / total, 4) for label, ct in steps.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="also profile each way")
    parser.add_argument("--top", type=int, default=18, help="functions listed per profile")
    parser.add_argument("--output", type=Path, default=RESULTS / "hotpath.json")
    args = parser.parse_args(argv)
    distinct = [small_png(i) for i in range(32)]
    prepared = [clipnormals.images.prepare_image(d) for d in distinct]
    ways: dict[str, tuple[Way, Sequence[Any]]] = {
        "bare (workers)": (workers, distinct),
        "bare (task per request)": (per_task, distinct),
        "bare (workers) + check": (functools.partial(workers, check=True), distinct),
        "client.map": (ours, distinct),
        "client.map (prepared)": (ours, prepared),
    }
    for way, source in ways.values():  # warm up: imports, caches
        timed(way, source, 200)
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    for round_ in range(args.rounds):
        names = list(ways)
        names = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in names:
            way, source = ways[name]
            cpu[name].append(timed(way, source, args.n))
    base = statistics.median(cpu["bare (workers)"])
    rows: dict[str, dict[str, Any]] = {}
    print(f"{args.n} requests per round, {args.rounds} rounds, concurrency {CONCURRENCY}")
    print(f"{'':26} {'CPU/req':>9} {'vs workers':>11}")
    for name, values in cpu.items():
        median = statistics.median(values)
        rows[name] = {
            "cpu_ms_per_req": round(median, 4),
            "ratio": round(median / base, 2),
            "rounds": [round(v, 4) for v in values],
        }
        print(f"{name:26} {median:>7.3f}ms {median / base:>10.2f}x")
    checked = statistics.median(cpu["bare (workers) + check"])
    over_bytes = rows["client.map"]["cpu_ms_per_req"] / base
    over_prepared = rows["client.map (prepared)"]["cpu_ms_per_req"] / base
    targets = {
        "client.map over bytes vs bare (workers)": (over_bytes, 2.0),
        "client.map over bytes vs bare (workers) + check": (
            rows["client.map"]["cpu_ms_per_req"] / checked,
            2.0,
        ),
        "client.map (prepared) vs bare (workers)": (over_prepared, 1.3),
    }
    for label, (ratio, target) in targets.items():
        verdict = "met" if ratio <= target else "not met"
        print(f"{label}: {ratio:.2f}x (target <= {target}x: {verdict})")
    if args.profile:
        for name, (way, source) in ways.items():
            print(f"\n{name}:")
            rows[name]["profile"] = profile(way, source, args.n, args.top)
    report = {
        "benchmark": "hotpath",
        "machine": machine(),
        "command": " ".join(["python benchmarks/hotpath.py", *(argv or sys.argv[1:])]),
        "requests_per_round": args.n,
        "rounds": args.rounds,
        "concurrency": CONCURRENCY,
        "results": rows,
        "targets": {
            label: {"ratio": round(ratio, 2), "target": target}
            for label, (ratio, target) in targets.items()
        },
    }
    write_json(args.output, report)
    print(f"written {shown(args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
