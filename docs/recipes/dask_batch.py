"""Normal maps for a folder of portraits across a Dask cluster, every worker sharing one key.

Each task takes a chunk of images and runs a client whose rate limiter, credit ledger and
claims live in Redis, under one name: together the workers stay under the key's quota, never
spend what the balance or the budget cannot pay for, and upload each distinct image once. A
worker that dies mid-chunk loses nothing: Dask runs the chunk again elsewhere, the images the
dead worker finished are found done (their claims), the ones it had in flight are taken over
once its lease has lapsed, and the credits it held count as possibly charged.

Outputs are named by content (``<sha256>.jpg``), written atomically, so a chunk that runs
twice, or two copies of one portrait, write one file.

    python docs/recipes/dask_batch.py --emulator out/          # everything local, ~30 s
    python docs/recipes/dask_batch.py --scheduler tcp://scheduler:8786 \\
        --redis-url redis://cache:6379/0 --name prod-key portraits/ out/

The API key is read by each worker from its own environment (``CLIPDROP_API_KEY``): it never
travels through the scheduler, where task arguments can be seen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import distributed

import clipnormals
from clipnormals.redis import RedisClaims, RedisLedger, RedisLimiter


@dataclass(frozen=True, kw_only=True)
class Job:
    """What every task needs to know; no secret (tasks' arguments are visible to the scheduler)."""

    redis_url: str
    name: str  # one name for the quota, the credits and the claims of this key
    out_dir: str
    requests: int = 60
    per: float = 60.0
    budget: int | None = None
    base_url: str | None = None  # None: CLIPDROP_BASE_URL, else the public API
    max_concurrency: int = 4
    lease: float = 30.0


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


async def process_chunk(paths: Sequence[str], job: Job) -> list[dict[str, Any]]:
    """One task: a chunk of images through one client that shares everything through Redis.

    Returns one outcome per path: ``status`` is ``done`` (``output`` says where) or ``not
    sent`` (the balance or the budget was reached), or ``failed`` (``error`` says why).
    """
    rate = clipnormals.RateLimit(requests=job.requests, per=job.per)
    policy = clipnormals.CreditPolicy(budget=job.budget)
    shared = {"url": job.redis_url, "name": job.name}
    hashes = {path: digest(path) for path in paths}
    outcomes: dict[str, dict[str, Any]] = {}
    async with (
        RedisLimiter(rate, **shared) as limiter,
        RedisLedger(policy, lease=job.lease, **shared) as ledger,
        RedisClaims(lease=job.lease, **shared) as claims,
        clipnormals.AsyncClient(
            base_url=job.base_url,
            rate_limit=rate,
            limiter=limiter,
            ledger=ledger,
            max_concurrency=job.max_concurrency,
        ) as client,
    ):
        by_hash: dict[str, list[str]] = {}
        for path in paths:  # copies within the chunk: one upload
            by_hash.setdefault(hashes[path], []).append(path)
        waiting = list(by_hash)
        while waiting:
            mine, held = [], []
            for sha in waiting:
                claim = await claims.claim(sha)
                if claim.state == "done":  # by another task, a copy of it, or an earlier run
                    outcome: dict[str, Any] = {"status": "done", "output": claim.record}
                    outcomes.update({p: {"path": p, **outcome} for p in by_hash[sha]})
                elif claim.state == "held":  # another live worker is on it
                    held.append(sha)
                else:
                    mine.append(sha)
            async for item in client.map(mine, image=lambda sha: by_hash[sha][0]):
                sha = item.source
                if item.result is not None:
                    output = f"{sha}.jpg"
                    await anyio.to_thread.run_sync(_write, Path(job.out_dir) / output, item.result)
                    await claims.done(sha, output)
                    outcome = {"status": "done", "output": output}
                else:
                    await claims.release(sha)  # let another worker try it
                    not_sent = isinstance(item.error, clipnormals.CreditBudgetError)
                    outcome = {
                        "status": "not sent" if not_sent else "failed",
                        "error": str(item.error),
                    }
                outcomes.update({p: {"path": p, **outcome} for p in by_hash[sha]})
            waiting = held
            if waiting:
                await anyio.sleep(0.25)
    return [outcomes[path] for path in paths]


def _write(target: Path, nm: clipnormals.NormalMap) -> None:
    """Atomically: a reader never sees half a file, and a rerun replaces it whole."""
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as tmp:
        tmp.write(nm.jpeg)
    os.replace(tmp.name, target)


def process_chunk_blocking(paths: Sequence[str], job: Job) -> list[dict[str, Any]]:
    """The task Dask runs, on a worker thread: an event loop of its own for the chunk."""
    return asyncio.run(process_chunk(paths, job))


def run(
    dask: distributed.Client, paths: Sequence[str], job: Job, *, chunk: int = 8
) -> list[dict[str, Any]]:
    """Process ``paths`` on the cluster behind ``dask``; one outcome per path.

    Each result is taken as soon as its task finishes and its future released, so a worker
    that dies later has no result of ours in its memory for Dask to recompute.
    """
    Path(job.out_dir).mkdir(parents=True, exist_ok=True)
    chunks = [list(paths[i : i + chunk]) for i in range(0, len(paths), chunk)]
    futures = dask.map(process_chunk_blocking, chunks, job=job, pure=False)
    outcomes: list[dict[str, Any]] = []
    for future in distributed.as_completed(futures):
        outcomes.extend(future.result())
        future.release()
    return outcomes


# -- running it locally ---------------------------------------------------------------------


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A throw-away redis-server on a loopback port."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not on the PATH: install it, or pass --redis-url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen([*command, "--appendonly", "no"], stdout=subprocess.DEVNULL)  # noqa: S603
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="?", help="a folder of portraits")
    parser.add_argument("out", help="the output folder")
    parser.add_argument("--emulator", action="store_true", help="local emulator, cluster, Redis")
    parser.add_argument("--scheduler", help="a Dask scheduler address (default: a LocalCluster)")
    parser.add_argument("--redis-url", help="default: a private redis-server")
    parser.add_argument("--name", default="clipnormals", help="the shared quota and credits")
    parser.add_argument("--rate", default="60/60", help="REQUESTS/SECONDS (default 60/60)")
    parser.add_argument("--budget", type=int, help="credits all workers may spend together")
    args = parser.parse_args()
    rate = clipnormals.RateLimit.parse(args.rate)
    with contextlib.ExitStack() as stack:
        if args.emulator:
            from clipnormals.emulator import EmulatorConfig, ServerLimit, start_in_thread

            # Time scaled by 10 (60 per 6 s); 25 credits for 40 images, 10 of them copies.
            rate = clipnormals.RateLimit(requests=60, per=6.0)
            server = stack.enter_context(
                start_in_thread(
                    EmulatorConfig(
                        keys={"recipe-key": 25},
                        limit=ServerLimit(requests=60, per=6.0),
                        admin=True,
                    )
                )
            )
            os.environ["CLIPDROP_API_KEY"] = "recipe-key"  # the workers inherit it
            os.environ["CLIPDROP_BASE_URL"] = server.url
            samples = Path(clipnormals.__file__).parent / "samples"
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            paths = _sample_portraits(samples, folder, distinct=30, copies=10)
        else:
            if args.inputs is None:
                parser.error("give a folder of portraits, or --emulator")
            paths = sorted(str(p) for p in Path(args.inputs).iterdir() if p.is_file())
        url = args.redis_url or stack.enter_context(private_redis())
        if args.scheduler:
            dask = stack.enter_context(distributed.Client(args.scheduler))
        else:
            cluster = stack.enter_context(
                distributed.LocalCluster(
                    n_workers=3, threads_per_worker=1, processes=True, dashboard_address=":0"
                )
            )
            dask = stack.enter_context(distributed.Client(cluster))
        job = Job(
            redis_url=url,
            name=args.name,
            out_dir=args.out,
            requests=rate.requests,
            per=rate.per,
            budget=args.budget,
        )
        outcomes = run(dask, paths, job)
        counts = {s: sum(o["status"] == s for o in outcomes) for s in ("done", "not sent")}
        outputs = len(list(Path(args.out).glob("*.jpg")))
        print(
            f"{len(outcomes)} images: {counts['done']} done ({outputs} distinct maps), "
            f"{counts['not sent']} not sent for credits, "
            f"{len(outcomes) - sum(counts.values())} failed"
        )
        if args.emulator:
            stats = server.emulator.stats
            print(
                f"server: {stats.credits_charged} credits charged, "
                f"{stats.statuses.get(429, 0)} 429s, {stats.statuses.get(402, 0)} 402s, "
                f"at most {stats.max_in_window} requests in any {stats.window:g} s"
            )


def _sample_portraits(samples: Path, folder: Path, *, distinct: int, copies: int) -> list[str]:
    from PIL import Image, ImageOps

    paths = []
    with Image.open(samples / "astronaut.png") as base:
        portrait = base.convert("RGB")
    for i in range(distinct):  # a slightly different crop each: distinct files
        image = ImageOps.fit(portrait, (160 + i, 200))
        path = folder / f"portrait-{i:03d}.png"
        image.save(path)
        paths.append(str(path))
    for i in range(copies):
        copy = folder / f"copy-{i:03d}.png"
        shutil.copyfile(paths[i], copy)
        paths.append(str(copy))
    return paths


if __name__ == "__main__":
    main()
