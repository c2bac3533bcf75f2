"""Four processes, one key: quota and credits shared through Redis (RedisLimiter + RedisLedger).

One emulator serves on loopback from a child process (``benchmarks/_common.py``: its clock and
CPU apart from the clients), with a sliding-window quota of 60 requests per 6 s (time scaled by
10) and lognormal latency (median 3 spacings). Each of four client processes runs an
``AsyncClient`` (max_concurrency 8) with a ``RedisLimiter`` and a ``RedisLedger`` of one name,
over its own distinct images, more than the credits allow. Two scenarios:

- **budget**: the key has plenty of credits; ``CreditPolicy(budget=CAP)`` caps what the four
  spend together;
- **balance**: the key has exactly CAP credits; no budget: the balance the server reports is the
  cap.

Printed per scenario: the share of the quota used (steady state, after the first window, as in
the limiter benchmark; and from the first request to the last), the most arrivals in any window
(the server's count), 429s and 402s at the server, and credits charged against the cap.

    python benchmarks/redis_limiter.py                        # private redis-server, ~60 s
    python benchmarks/redis_limiter.py --url redis://127.0.0.1:6379/0 --processes 3 --cap 120
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402

import clipnormals  # noqa: E402
from benchmarks._common import KEY_ENV, EmulatorProcess, ServerSpec, machine  # noqa: E402
from clipnormals.redis import RedisLedger, RedisLimiter  # noqa: E402
from tests.fakeapi import max_in_window, prepared  # noqa: E402


async def worker(
    url: str, name: str, n: int, rate: str, seed: int, base_url: str, budget: int
) -> dict[str, Any]:
    rl = clipnormals.RateLimit.parse(rate)
    policy = clipnormals.CreditPolicy(budget=None if budget < 0 else budget)
    images = [prepared(seed * 100_000 + i) for i in range(n)]
    counts = {"done": 0, "not sent": 0, "failed": 0}
    async with (
        RedisLimiter(rl, url=url, name=name) as limiter,
        RedisLedger(policy, url=url, name=name) as ledger,
        clipnormals.AsyncClient(
            api_key=os.environ[KEY_ENV],
            base_url=base_url,
            rate_limit=rl,
            limiter=limiter,
            ledger=ledger,
            max_concurrency=8,
        ) as client,
    ):
        async for item in client.map(images):
            if item.ok:
                counts["done"] += 1
            elif isinstance(item.error, clipnormals.CreditBudgetError):
                counts["not sent"] += 1
            else:
                counts["failed"] += 1
        stats = client.stats
    return {**counts, "attempts": stats.attempts, "rate_limited": stats.rate_limited}


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


def scenario(url: str, label: str, processes: int, n: int, rate: str, cap: int) -> dict[str, Any]:
    rl = clipnormals.RateLimit.parse(rate)
    key = f"bench-{uuid.uuid4().hex[:8]}"
    name = f"bench-{uuid.uuid4().hex[:8]}"
    credits, budget = (10 * n, cap) if label == "budget" else (cap, -1)
    spec = ServerSpec(
        requests=rl.requests,
        per=rl.per,
        policy="sliding",
        latency_median=3 * rl.spacing,
        latency_sigma=0.6,
        latency_max=20 * rl.spacing,
        synth="canned",
        verify_images=False,
        credits=credits,
    )
    share = n // processes
    with EmulatorProcess(spec, key=key) as server:
        env = dict(os.environ, **{KEY_ENV: key})
        argv = [url, name, str(share), rate, "{seed}", server.url, str(budget)]
        children = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", *[a.format(seed=i) for a in argv]],
                stdout=subprocess.PIPE,
                env=env,
            )
            for i in range(processes)
        ]
        per_process = [json.loads(child.communicate()[0]) for child in children]
        if any(child.returncode for child in children):
            sys.exit("a worker process failed")
        trace = server.trace()
    arrivals = sorted(t for t, _ in trace.arrivals)
    steady = arrivals[rl.requests :]
    statuses = trace.stats["statuses"]
    return {
        "scenario": label,
        "cap": cap,
        "wanted": share * processes,
        "done": sum(p["done"] for p in per_process),
        "not_sent": sum(p["not sent"] for p in per_process),
        "failed": sum(p["failed"] for p in per_process),
        "done_per_process": [p["done"] for p in per_process],
        "credits_charged": trace.stats["credits_charged"],
        "server_429s": statuses.get("429", 0),
        "server_402s": statuses.get("402", 0),
        "requests": len(arrivals),
        "fraction_of_quota_steady": round(
            (len(steady) - 1) / (steady[-1] - steady[0]) * rl.per / rl.requests, 4
        ),
        "fraction_of_quota_first_to_last": round(
            (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) * rl.per / rl.requests, 4
        ),
        "theoretical_fraction": round(rl.sustained_fraction, 4),
        "max_arrivals_in_any_window": trace.stats["max_in_window"],
        "max_arrivals_in_any_window_check": max_in_window(arrivals, rl.per),
        "quota": rl.requests,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, name, n, rate, seed, base_url, budget = sys.argv[2:9]
        report = anyio.run(worker, url, name, int(n), rate, int(seed), base_url, int(budget))
        print(json.dumps(report))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a Redis server; default: start a private redis-server")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("-n", type=int, default=320, help="images wanted, all processes")
    parser.add_argument("--cap", type=int, default=240, help="the credit cap (budget, balance)")
    parser.add_argument("--rate", default="60/6")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/redis_limiter.json")
    args = parser.parse_args()
    t0 = time.monotonic()
    reports = []
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(private_redis())
        for label in ("budget", "balance"):
            report = scenario(url, label, args.processes, args.n, args.rate, args.cap)
            reports.append(report)
            print(
                f"{label}: {args.processes} processes want {report['wanted']} images, "
                f"cap {report['cap']} credits, {args.rate}"
            )
            print(
                f"  quota used: {report['fraction_of_quota_steady']:.2%} steady, "
                f"{report['fraction_of_quota_first_to_last']:.2%} first to last request "
                f"(theory {report['theoretical_fraction']:.2%}); at most "
                f"{report['max_arrivals_in_any_window']}/{report['quota']} in any window"
            )
            print(
                f"  server: {report['server_429s']} 429s, {report['server_402s']} 402s, "
                f"{report['credits_charged']} credits charged of the cap {report['cap']}"
            )
            print(
                f"  clients: {report['done']} done {report['done_per_process']}, "
                f"{report['not_sent']} not sent for credits, {report['failed']} failed"
            )
    print(f"{time.monotonic() - t0:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "redis_limiter", "scenarios": reports, "machine": machine()}
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
