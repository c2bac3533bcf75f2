"""Quota saturation: how much of a 60-per-window quota each client turns into results, and at
what cost in 429s, against every way a server may count.

Time is scaled by 10: the quota is 60 requests per 6 s (spacing 100 ms, far above timer
jitter). The emulator runs as a real loopback server in its own process, one fresh server (and
so one fresh quota) per client run, with lognormal latency (median 3 spacings, sigma 0.8, capped
at 40 spacings: several requests are always in flight). For each counting policy (fixed,
sliding, token, nginx with burst 5) the same images go through:

- ``clipnormals``: ``AsyncClient.map`` with ``RateLimit(requests=60, per=6)``, all defaults;
- ``gather+aiolimiter``: ``asyncio.gather`` over every image, each request behind
  ``aiolimiter.AsyncLimiter(60, 6)``, a 429 retried after a short fixed sleep (1 s, scaled);
- ``cookbook``: the well-known "API request parallel processor" loop: a request budget that
  starts full (60) and refills continuously, every dispatch paused 15 s (scaled) after any
  rate-limit error, retries re-queued without backoff, 5 attempts;
- ``sequential``: a plain ``httpx.Client`` loop, one request at a time. It is bound by latency
  (about a quarter of the quota), so it runs in its own process against its own server while
  the three others take their turns.

The emulator's counters are the ground truth (429s sent, credits charged, most arrivals in any
window); its arrival log gives the rates; the clients' own counts are cross-checks.

Figures per client and policy:
- ``quota``: successes per window, averaged over the whole windows from one window after the
  first success to the last success, as a fraction of the quota (what a long batch gets: the
  start-up transient is left out, and bursty senders are measured over whole periods); on a
  240-image run that is three windows, so one success is 0.56 points;
- ``rate``: successes per second between the second success and the last, over the quota's
  rate (the first may be a credit probe sent alone; finer than ``quota`` for a steady sender,
  flattering for a bursty one);
- ``batch``: images done per second over the whole run, time to the last result, as a fraction
  of the quota (on a short run a client that bursts at the start gains from a token bucket that
  starts full; the latency of the last request costs everyone a little);
- 429s received (in brackets: those after the first window, i.e. not caused by a start-up
  burst), wasted attempts (arrivals that were not a success), credits charged, the most
  arrivals in any window, wall time, and p50/p99 time-to-result from the start of the run.

Then the real limiters (``--sections real``), 250 images per client, time scaled by 10 and a
fresh quota for every run (the clients' retry backoffs scaled like their quotas):

- nginx ``limit_req rate=10r/s`` without burst, clients told ``600/60``;
- nginx ``burst=1 nodelay`` with 0-150 ms (uniform) between handing a request to httpx's
  transport and the wire (as a connection or TLS set-up would add), clients told ``600/60``;
  "slot before the transport" is clipnormals behind a wrapper transport, so that it takes its
  slots before the delay, as every request was sent before slots were taken on the wire;
- HAProxy, a stick table per key denying with 429 when ``http_req_rate(10s) gt 100``, clients
  told ``100/10``;
- the emulator with a real quota of 30 per 6 s under each policy, clients told ``60/6``.

Behind a proxy the emulator sees only what the proxy let through; the 429s are the proxy's own
(counted in its log). ``share`` is the successes per second between the second and the last
success over the quota's rate (the real one for the halved quota); ``settled`` the same from
three windows on (for the halved quota: after the limiter settled).

    python benchmarks/saturation.py            # about 20 minutes
    python benchmarks/saturation.py --quick    # a smoke run of the emulator policies
    python benchmarks/saturation.py --sections real   # the real limiters only, ~12 minutes

Writes ``benchmarks/results/saturation.json`` (figures), ``saturation-arrivals.json`` (every
arrival the servers saw: seconds since the client started, status) and ``saturation.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from _common import (
    KEY_ENV,
    RESULTS,
    ROOT,
    Chart,
    EmulatorProcess,
    ServerSpec,
    Trace,
    machine,
    percentile,
    save_grid,
    shown,
    small_png,
    write_json,
)
from aiolimiter import AsyncLimiter

import clipnormals
from tests.limiters import servers

ENDPOINT = "/portrait-surface-normals/v1"
POLICIES = ("fixed", "sliding", "token", "nginx")
CLIENTS = ("clipnormals", "gather+aiolimiter", "cookbook", "sequential")
COLORS = {
    "clipnormals": "blue",
    "gather+aiolimiter": "orange",
    "cookbook": "green",
    "sequential": "purple",
}
QUOTA_TARGET = 0.98


@dataclass(slots=True)
class Run:
    """What one client saw of its own run (times on the shared monotonic clock)."""

    started: float
    wall_s: float
    done: list[float] = field(default_factory=list)  # time-to-result of each image
    failed: int = 0
    attempts: int = 0
    rate_limited: int = 0
    learned: str | None = None  # what clipnormals' limiter learned, as a --rate spec


def post_kwargs(key: str, data: bytes) -> dict[str, Any]:
    return {
        "headers": {"x-api-key": key},
        "files": {"image_file": ("portrait.png", data, "image/png")},
    }


# -- the clients ------------------------------------------------------------------------------


def scaled_retry(scale: float) -> clipnormals.RetryPolicy:
    """The default retry policy with its backoff scaled like the quota (as the baselines' sleeps
    are): 0.5 s to 30 s becomes 0.05 s to 3 s at a scale of 0.1."""
    default = clipnormals.RetryPolicy()
    return clipnormals.RetryPolicy(
        initial=default.initial * scale, max_backoff=default.max_backoff * scale
    )


async def run_clipnormals(
    url: str,
    key: str,
    images: Sequence[bytes],
    requests: int,
    per: float,
    *,
    scale: float | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    adaptive: bool = True,
) -> Run:
    started = time.monotonic()
    run = Run(started=started, wall_s=0.0)
    async with clipnormals.AsyncClient(
        api_key=key,
        base_url=url,
        rate_limit=clipnormals.RateLimit(requests=requests, per=per, adaptive=adaptive),
        retry=scaled_retry(per / 60.0 if scale is None else scale),
        transport=transport,
    ) as client:
        async for item in client.map(images):
            if item.ok:
                run.done.append(time.monotonic() - started)
            else:
                run.failed += 1
        stats = client.stats
    run.wall_s = time.monotonic() - started
    run.attempts, run.rate_limited = stats.attempts, stats.rate_limited
    run.learned = stats.learned.spec if stats.learned is not None else None
    return run


async def run_gather_aiolimiter(
    url: str,
    key: str,
    images: Sequence[bytes],
    requests: int,
    per: float,
    *,
    scale: float | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Run:
    scale = per / 60.0 if scale is None else scale
    limiter = AsyncLimiter(requests, per)
    started = time.monotonic()
    run = Run(started=started, wall_s=0.0)

    async def one(http: httpx.AsyncClient, data: bytes) -> bytes:
        for _ in range(8):
            async with limiter:
                run.attempts += 1
                response = await http.post(ENDPOINT, **post_kwargs(key, data))
            if response.status_code == 429:
                run.rate_limited += 1
                await asyncio.sleep(1.0 * scale)
                continue
            response.raise_for_status()
            run.done.append(time.monotonic() - started)
            return response.content
        raise RuntimeError("still rate limited after 8 attempts")

    async with httpx.AsyncClient(base_url=url, timeout=60.0, transport=transport) as http:
        results = await asyncio.gather(*(one(http, d) for d in images), return_exceptions=True)
    run.failed = sum(isinstance(r, BaseException) for r in results)
    run.wall_s = time.monotonic() - started
    return run


@dataclass(slots=True)
class _Request:
    index: int
    data: bytes
    attempts_left: int


@dataclass(slots=True)
class _Tracker:
    in_progress: int = 0
    last_rate_limit_error: float = -math.inf


async def run_cookbook(
    url: str,
    key: str,
    images: Sequence[bytes],
    requests: int,
    per: float,
    *,
    scale: float | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Run:
    """The "API request parallel processor" pattern, its constants scaled with the window."""
    scale = per / 60.0 if scale is None else scale
    pause_after_rate_limit_error = 15.0 * scale
    sleep_each_loop = 0.001
    max_attempts = 5
    started = time.monotonic()
    run = Run(started=started, wall_s=0.0)
    retry_queue: asyncio.Queue[_Request] = asyncio.Queue()
    tracker = _Tracker()
    tasks: set[asyncio.Task[None]] = set()

    async def call_api(http: httpx.AsyncClient, request: _Request) -> None:
        run.attempts += 1
        error = False
        try:
            response = await http.post(ENDPOINT, **post_kwargs(key, request.data))
        except httpx.HTTPError:
            error = True
        else:
            if response.status_code == 429:
                tracker.last_rate_limit_error = time.monotonic()
                run.rate_limited += 1
                error = True
            elif response.status_code != 200:
                error = True
        if not error:
            run.done.append(time.monotonic() - started)
            tracker.in_progress -= 1
        elif request.attempts_left:
            retry_queue.put_nowait(request)
        else:
            run.failed += 1
            tracker.in_progress -= 1

    source = iter(enumerate(images))
    more = True
    next_request: _Request | None = None
    capacity = float(requests)
    last_update = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=60.0, transport=transport) as http:
        while True:
            if next_request is None:
                if not retry_queue.empty():
                    next_request = retry_queue.get_nowait()
                elif more:
                    try:
                        index, data = next(source)
                    except StopIteration:
                        more = False
                    else:
                        next_request = _Request(index, data, max_attempts)
                        tracker.in_progress += 1
            now = time.monotonic()
            capacity = min(capacity + requests * (now - last_update) / per, float(requests))
            last_update = now
            if next_request is not None and capacity >= 1:
                capacity -= 1
                next_request.attempts_left -= 1
                task = asyncio.create_task(call_api(http, next_request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_request = None
            if tracker.in_progress == 0:
                break
            await asyncio.sleep(sleep_each_loop)
            since = time.monotonic() - tracker.last_rate_limit_error
            if since < pause_after_rate_limit_error:
                await asyncio.sleep(pause_after_rate_limit_error - since)
    run.wall_s = time.monotonic() - started
    return run


def run_sequential(
    url: str, key: str, images: Sequence[bytes], per: float, *, scale: float | None = None
) -> Run:
    scale = per / 60.0 if scale is None else scale
    started = time.monotonic()
    run = Run(started=started, wall_s=0.0)
    with httpx.Client(base_url=url, timeout=60.0) as http:
        for data in images:
            for _ in range(8):
                run.attempts += 1
                response = http.post(ENDPOINT, **post_kwargs(key, data))
                if response.status_code == 429:
                    run.rate_limited += 1
                    time.sleep(1.0 * scale)
                    continue
                if response.status_code == 200:
                    run.done.append(time.monotonic() - started)
                else:
                    run.failed += 1
                break
            else:
                run.failed += 1
    run.wall_s = time.monotonic() - started
    return run


AsyncRunner = Callable[..., Coroutine[Any, Any, Run]]
ASYNC_CLIENTS: dict[str, AsyncRunner] = {
    "clipnormals": run_clipnormals,
    "gather+aiolimiter": run_gather_aiolimiter,
    "cookbook": run_cookbook,
}


# -- one policy -------------------------------------------------------------------------------


def server_spec(policy: str, requests: int, per: float, retry_after: str) -> ServerSpec:
    spacing = per / requests
    return ServerSpec(
        requests=requests,
        per=per,
        policy=policy,
        burst=5,
        retry_after=retry_after,
        latency_median=round(3 * spacing, 6),
        latency_sigma=0.8,
        latency_max=round(40 * spacing, 6),
    )


def sustained_fraction(ok: Sequence[float], requests: int, per: float) -> float:
    """Successes per window over the whole windows after the first, as a fraction of the quota.

    The windows start one window after the first success and stop at the last whole window
    before the last success, so a client that sends in bursts (60 at once, then nothing) is
    measured over whole periods, and the start-up transient is left out.
    """
    if not ok:
        return math.nan
    begin = ok[0] + per
    windows = math.floor((ok[-1] - begin) / per + 1e-9)
    if windows < 1:
        return math.nan
    end = begin + windows * per
    count = bisect.bisect_left(ok, end) - bisect.bisect_left(ok, begin)
    return count / (windows * requests)


def summarise(run: Run, trace: Trace, n: int, requests: int, per: float) -> dict[str, Any]:
    arrivals = sorted((t - run.started, status) for t, status in trace.arrivals)
    ok = [t for t, status in arrivals if status == 200]
    last = max(run.done, default=math.nan)
    settled = (ok[0] if ok else 0.0) + per
    stats = trace.stats
    return {
        "images": n,
        "done": len(run.done),
        "failed": run.failed,
        "quota_fraction": sustained_fraction(ok, requests, per),
        "rate_fraction": (len(ok) - 2) / (ok[-1] - ok[1]) * per / requests
        if len(ok) > 2
        else math.nan,
        "batch_fraction": len(run.done) / last * per / requests if run.done else math.nan,
        "rate_limited": stats["rate_limited"],
        "rate_limited_after_first_window": sum(
            1 for t, status in arrivals if status == 429 and t >= settled
        ),
        "wasted_attempts": stats["requests"] - stats["successes"],
        "credits_charged": stats["credits_charged"],
        "max_in_window": stats["max_in_window"],
        "server_requests": stats["requests"],
        "wall_s": run.wall_s,
        "p50_s": percentile(run.done, 50),
        "p99_s": percentile(run.done, 99),
        "client_attempts": run.attempts,
        "client_rate_limited": run.rate_limited,
        "cross_check_ok": run.attempts == stats["requests"]
        and run.rate_limited == stats["statuses"].get("429", 0),
        "arrivals": [[round(t, 4), status] for t, status in arrivals],
    }


def start_sequential(url: str, key: str, n: int, per: float) -> subprocess.Popen[str]:
    env = dict(os.environ, **{KEY_ENV: key})
    command = [sys.executable, __file__, "--sequential-worker", url, str(n), str(per)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True, cwd=ROOT)


def run_policy(
    policy: str, n: int, n_sequential: int, requests: int, per: float, retry_after: str
) -> dict[str, dict[str, Any]]:
    spec = server_spec(policy, requests, per, retry_after)
    images = [small_png(i) for i in range(n)]
    out: dict[str, dict[str, Any]] = {}
    with EmulatorProcess(spec, key="bench-sequential") as seq_server:
        worker = start_sequential(seq_server.url, seq_server.key, n_sequential, per)
        try:
            for number, (name, runner) in enumerate(ASYNC_CLIENTS.items()):
                with EmulatorProcess(spec, key=f"bench-{number}") as server:
                    run = asyncio.run(runner(server.url, server.key, images, requests, per))
                    trace = server.trace()
                out[name] = summarise(run, trace, n, requests, per)
            stdout, _ = worker.communicate(timeout=1800)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        if worker.returncode != 0:
            raise RuntimeError(f"the sequential client failed (exit {worker.returncode})")
        run = Run(**json.loads(stdout))
        out["sequential"] = summarise(run, seq_server.trace(), n_sequential, requests, per)
    return out


# -- real limiters, and a quota smaller than configured ----------------------------------------

TIME_SCALE = 0.1  # 600 per minute is 60 per minute scaled by 10


@dataclass(frozen=True, slots=True)
class Case:
    """One server in front of which every listed client runs with a fresh quota."""

    name: str
    kind: str  # "nginx", "haproxy" or "emulator" (the emulator's own limit)
    requests: int  # what the clients are told
    per: float
    clients: tuple[str, ...]
    server_requests: int = 0  # the emulator's real quota (kind "emulator")
    policy: str = "sliding"
    burst: int | None = None  # nginx
    slow_wire: bool = False  # 0-150 ms between handing a request to the transport and the wire


ALL = ("clipnormals", "clipnormals (not adaptive)", "gather+aiolimiter", "cookbook", "sequential")
CASES = (
    Case("nginx, no burst", "nginx", 600, 60.0, ALL),
    Case(
        "nginx, burst=1 nodelay, 0-150 ms to the wire",
        "nginx",
        600,
        60.0,
        (
            "clipnormals",
            "clipnormals (slot before the transport)",
            "clipnormals (not adaptive)",
            "gather+aiolimiter",
            "cookbook",
        ),
        burst=1,
        slow_wire=True,
    ),
    Case("haproxy http_req_rate(10s) gt 100", "haproxy", 100, 10.0, ALL),
    *(
        Case(
            f"half quota, {policy}",
            "emulator",
            60,
            6.0,
            ("clipnormals", "gather+aiolimiter", "cookbook")
            if policy == "sliding"
            else ("clipnormals",),
            server_requests=30,
            policy=policy,
        )
        for policy in POLICIES
    ),
)


@contextlib.contextmanager
def case_server(case: Case, key: str) -> Iterator[tuple[str, Callable[[], tuple[Trace, int]]]]:
    """The server of ``case``: its URL and a function giving (emulator trace, 429s sent)."""
    if case.kind == "emulator":
        spec = ServerSpec(
            requests=case.server_requests,
            per=case.per,
            policy=case.policy,
            burst=5,
            retry_after="seconds",
            latency_median=0.05,
            latency_sigma=0.5,
            latency_max=1.0,
            synth="canned",
        )
        with EmulatorProcess(spec, key=key) as server:

            def emulator_counts() -> tuple[Trace, int]:
                trace = server.trace()
                return trace, int(trace.stats["rate_limited"])

            yield server.url, emulator_counts
        return
    spec = ServerSpec(requests=None, latency_median=0.05, latency_sigma=0.5, synth="canned")
    with EmulatorProcess(spec, key=key) as upstream:
        proxy_cm = (
            servers.nginx(upstream.url, rate=round(case.requests / case.per), burst=case.burst)
            if case.kind == "nginx"
            else servers.haproxy(upstream.url, requests=case.requests, per=round(case.per))
        )
        with proxy_cm as proxy:

            def proxy_counts() -> tuple[Trace, int]:
                time.sleep(0.3)  # let the proxy write its last log lines
                return upstream.trace(), proxy.refused()

            yield proxy.url, proxy_counts


def run_client(case: Case, name: str, url: str, key: str, images: Sequence[bytes]) -> Run:
    transport: httpx.AsyncBaseTransport | None = None
    if case.slow_wire:
        wrapped = name == "clipnormals (slot before the transport)"
        transport = (servers.SlowToTheWireWrapped if wrapped else servers.SlowToTheWire)(
            0.15, seed=1
        )
    if name == "sequential":
        return run_sequential(url, key, images, case.per, scale=TIME_SCALE)
    if name.startswith("clipnormals"):
        coro = run_clipnormals(
            url,
            key,
            images,
            case.requests,
            case.per,
            scale=TIME_SCALE,
            transport=transport,
            adaptive=name != "clipnormals (not adaptive)",
        )
    else:
        runner = ASYNC_CLIENTS[name]
        coro = runner(
            url, key, images, case.requests, case.per, scale=TIME_SCALE, transport=transport
        )
    return asyncio.run(coro)


def summarise_case(case: Case, run: Run, trace: Trace, refused: int, n: int) -> dict[str, Any]:
    """Figures of one client against one case. The emulator behind a proxy sees only what the
    proxy let through; 429s come from the proxy's log (or the emulator's counters)."""
    ok = sorted(t - run.started for t, status in trace.arrivals if status == 200)
    ok = ok[1:]  # the first may be a credit probe, sent alone
    quota_rate = (case.server_requests or case.requests) / case.per
    share = (len(ok) - 1) / (ok[-1] - ok[0]) / quota_rate if len(ok) > 1 else math.nan
    settled = [t for t in ok if t >= 3 * case.per] if case.kind == "emulator" else ok
    settled_share = (
        (len(settled) - 1) / (settled[-1] - settled[0]) / quota_rate
        if len(settled) > 1
        else math.nan
    )
    return {
        "images": n,
        "done": len(run.done),
        "failed": run.failed,
        "share": share,
        "share_after_3_windows": settled_share,
        "rate_limited": refused,
        "client_rate_limited": run.rate_limited,
        "client_attempts": run.attempts,
        "wall_s": run.wall_s,
        "p50_s": percentile(run.done, 50),
        "learned": run.learned,
    }


def run_case(case: Case, n: int) -> dict[str, dict[str, Any]]:
    images = [small_png(i) for i in range(n)]
    out: dict[str, dict[str, Any]] = {}
    for number, name in enumerate(case.clients):
        with case_server(case, f"bench-real-{number}") as (url, counts):
            run = run_client(case, name, url, f"bench-real-{number}", images)
            trace, refused = counts()
        out[name] = summarise_case(case, run, trace, refused, n)
    return out


def print_case(case: Case, rows: dict[str, dict[str, Any]]) -> None:
    told = f"told {case.requests}/{case.per:g}"
    real = f", real quota {case.server_requests}/{case.per:g}" if case.server_requests else ""
    print(f"\n{case.name} ({told}{real})")
    print(
        f"  {'client':40} {'images':>6} {'share':>7} {'settled':>8} {'429s':>5} {'wall':>7}"
        f" {'failed':>6}  learned"
    )
    for name, r in rows.items():
        print(
            f"  {name:40} {r['images']:>6} {_share(r['share'])}"
            f" {_share(r['share_after_3_windows'])} {r['rate_limited']:>5}"
            f" {r['wall_s']:>6.1f}s {r['failed']:>6}  {r['learned'] or '-'}"
        )


# -- report -----------------------------------------------------------------------------------


def _share(value: float) -> str:
    return f"{'n/a':>7}" if math.isnan(value) else f"{value:>7.1%}"


def print_policy(policy: str, rows: dict[str, dict[str, Any]], requests: int) -> None:
    print(f"\n{policy}")
    print(
        f"  {'client':18} {'images':>6} {'quota':>7} {'rate':>7} {'batch':>7} {'429s (late)':>11}"
        f" {'wasted':>6}"
        f" {'credits':>7} {'max/win':>8} {'wall':>7} {'p50':>7} {'p99':>7} {'failed':>6}"
    )
    for name, r in rows.items():
        check = "" if r["cross_check_ok"] else "  (client counts differ from the server's)"
        print(
            f"  {name:18} {r['images']:>6} {_share(r['quota_fraction'])}"
            f" {_share(r['rate_fraction'])} {_share(r['batch_fraction'])}"
            f" {r['rate_limited']:>5} ({r['rate_limited_after_first_window']:>3})"
            f" {r['wasted_attempts']:>6} {r['credits_charged']:>7}"
            f" {r['max_in_window']:>4}/{requests:<3} {r['wall_s']:>6.1f}s {r['p50_s']:>6.2f}s"
            f" {r['p99_s']:>6.2f}s {r['failed']:>6}{check}"
        )


def verdicts(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Plain statements of where clipnormals meets its target and beats each baseline."""
    lines = []
    for policy, rows in results.items():
        ours = rows["clipnormals"]
        if math.isnan(ours["quota_fraction"]):
            lines.append(f"{policy}: too few images for a whole window after the first: use -n")
            continue
        target = ours["rate_fraction"] >= QUOTA_TARGET and ours["rate_limited"] == 0
        lines.append(
            f"{policy}: clipnormals {ours['quota_fraction']:.1%} of the quota by whole windows,"
            f" {ours['rate_fraction']:.1%} by rate, {ours['rate_limited']} 429s:"
            f" target (>= {QUOTA_TARGET:.0%} by rate, no 429) {'met' if target else 'MISSED'}"
        )
        for name, r in rows.items():
            if name == "clipnormals":
                continue
            if math.isnan(r["quota_fraction"]):
                quota = "n/a (too few images for a whole window)"
            else:
                better = ours["quota_fraction"] > r["quota_fraction"]
                quota = (
                    f"{ours['quota_fraction']:.1%} vs {r['quota_fraction']:.1%}"
                    f" {'better' if better else 'NOT better'}"
                )
            fewer = ours["rate_limited"] <= r["rate_limited"]
            tie = " (both zero)" if ours["rate_limited"] == r["rate_limited"] == 0 else ""
            lines.append(
                f"  vs {name}: quota {quota}; 429s {ours['rate_limited']} vs"
                f" {r['rate_limited']} {'no worse' if fewer else 'WORSE'}{tie}"
            )
    return lines


def real_verdicts(real: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The targets for real limiters and a halved quota, met or missed, for clipnormals."""
    lines = []
    for case_name, rows in real.items():
        ours = rows.get("clipnormals")
        if ours is None:
            continue
        if case_name.startswith("nginx"):
            share, most, min_share = ours["share"], 3, 0.90
        elif case_name.startswith("haproxy"):
            share, most, min_share = ours["share"], 0, 0.98
        else:  # a halved quota: at most 5 before settling (3 windows), then 90% of the real one
            share, most, min_share = ours["share_after_3_windows"], 5, 0.90
        met = ours["rate_limited"] <= most and share >= min_share and not ours["failed"]
        lines.append(
            f"{case_name}: clipnormals {share:.1%} of the quota, {ours['rate_limited']} 429s"
            f" (target <= {most}, >= {min_share:.0%}): {'met' if met else 'MISSED'}"
        )
    return lines


def window_counts(times: Sequence[float], per: float, until: float) -> tuple[list[float], ...]:
    """Arrivals in the trailing window ``(t - per, t]``, sampled every 20 ms up to ``until``."""
    xs: list[float] = []
    ys: list[float] = []
    t = 0.0
    while t <= until:
        xs.append(t)
        ys.append(bisect.bisect_right(times, t) - bisect.bisect_right(times, t - per))
        t += 0.02
    return xs, ys


def plot(
    results: dict[str, dict[str, dict[str, Any]]], requests: int, per: float, path: Path
) -> None:
    charts: list[Chart] = []
    for policy, rows in results.items():
        until = 1.05 * max(r["wall_s"] for name, r in rows.items() if name != "sequential")
        starts = {name: [t for t, _ in r["arrivals"] if t <= until] for name, r in rows.items()}
        top = max(len(s) for s in starts.values())
        left = Chart(
            f"{policy}: request starts (server arrivals)",
            xlabel="seconds since the client started",
            ylabel="requests started",
            xlim=(0, until),
            ylim=(0, top * 1.05),
        )
        left.line([0, until], [0, until * requests / per], "grey", width=1, dashed=True)
        for name, times in starts.items():
            left.line(times, list(range(1, len(times) + 1)), COLORS[name])
        refused_x: list[float] = []
        refused_y: list[float] = []
        for r in rows.values():
            for count, (t, status) in enumerate(r["arrivals"], start=1):
                if status == 429 and t <= until:
                    refused_x.append(t)
                    refused_y.append(count)
        left.crosses(refused_x, refused_y, "red")
        right = Chart(
            f"{policy}: arrivals in the last {per:g} s (429s included)",
            xlabel="seconds since the client started",
            ylabel=f"starts in any {per:g} s",
            xlim=(0, until),
            ylim=(0, max(requests * 1.6, max(r["max_in_window"] for r in rows.values()) * 1.1)),
        )
        right.line([0, until], [requests, requests], "red", dashed=True)
        for name, times in starts.items():
            xs, ys = window_counts(times, per, until)
            right.line(xs, ys, COLORS[name], width=1 if name != "clipnormals" else 2)
        charts += [left, right]
    title = (
        f"Quota saturation: {requests} requests per {per:g} s (time scaled by {60 / per:g}),"
        " lognormal latency, one fresh server per client"
    )
    legend = [(name, COLORS[name], "line") for name in CLIENTS]
    legend += [
        (f"quota rate ({requests} per {per:g} s)", "grey", "dash"),
        (f"limit ({requests} per window)", "red", "dash"),
        ("429 received", "red", "x"),
    ]
    save_grid(charts, 2, path, title=title, legend=legend)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("-n", type=int, default=None, help="images per client (default 240)")
    parser.add_argument(
        "--sequential-n",
        type=int,
        default=None,
        help="images for the sequential client (default: same as -n)",
    )
    parser.add_argument("--rate", default="60/6", help="the quota, REQUESTS/SECONDS")
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument(
        "--retry-after",
        choices=("precise", "seconds", "off"),
        default="precise",
        help="what the server's 429 carries",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 130 images, 30 sequential"
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=("emulator", "real"),
        default=["emulator", "real"],
        help="emulator: the four counting policies; real: nginx, HAProxy and a halved quota",
    )
    parser.add_argument("--real-n", type=int, default=250, help="images per real-limiter run")
    parser.add_argument(
        "--cases", nargs="+", default=None, help="real cases whose name contains one of these"
    )
    parser.add_argument(
        "--clients", nargs="+", default=None, help="real-case clients to run (default: all)"
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="merge into the existing --output instead of replacing it (the rows run now win)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "saturation.json")
    parser.add_argument("--sequential-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.sequential_worker:
        url, n_text, per_text = args.sequential_worker
        images = [small_png(i) for i in range(int(n_text))]
        run = run_sequential(url, os.environ[KEY_ENV], images, float(per_text))
        print(json.dumps(asdict(run)))
        return 0

    rate = clipnormals.RateLimit.parse(args.rate)
    requests, per = rate.requests, rate.per
    n = args.n or (130 if args.quick else 240)
    n_sequential = args.sequential_n or (30 if args.quick else n)
    started = time.monotonic()
    print(
        f"{n} images per client ({n_sequential} for the sequential one), quota {requests} per"
        f" {per:g} s, Retry-After {args.retry_after}"
    )
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for policy in args.policies if "emulator" in args.sections else ():
        results[policy] = run_policy(policy, n, n_sequential, requests, per, args.retry_after)
        print_policy(policy, results[policy], requests)
    real: dict[str, dict[str, dict[str, Any]]] = {}
    for case in CASES if "real" in args.sections else ():
        if args.cases and not any(part in case.name for part in args.cases):
            continue
        if args.clients:
            case = replace(case, clients=tuple(c for c in case.clients if c in args.clients))
        real[case.name] = run_case(case, args.real_n)
        print_case(case, real[case.name])
    if args.update and args.output.exists():
        earlier = json.loads(args.output.read_text())
        for policy, rows in results.items():
            earlier.setdefault("results", {}).setdefault(policy, {}).update(rows)
        for name, rows in real.items():
            earlier.setdefault("real", {}).setdefault(name, {}).update(rows)
        results, real = earlier.get("results", {}), earlier.get("real", {})
    elapsed = time.monotonic() - started
    lines = verdicts(results) + real_verdicts(real)
    print(f"\n{elapsed:.0f} s in all\n")
    print("\n".join(lines))
    report = {
        "benchmark": "saturation",
        "machine": machine(),
        "command": " ".join(["python benchmarks/saturation.py", *(argv or sys.argv[1:])]),
        "quota": {"requests": requests, "per": per},
        "server": {
            k: v
            for k, v in asdict(server_spec("sliding", requests, per, args.retry_after)).items()
            if k not in ("policy", "credits", "trace")
        },
        "images": n,
        "sequential_images": n_sequential,
        "elapsed_s": round(elapsed, 1),
        "verdicts": lines,
        "results": results,
        "real_images": args.real_n,
        "real": real,
    }
    if args.update and "emulator" not in args.sections:
        report["elapsed_s"] = None  # several runs merged
        write_json(args.output, report)
        print(f"\nupdated {shown(args.output)}")
        return 0
    traces = {
        policy: {name: r.pop("arrivals") for name, r in rows.items()}
        for policy, rows in results.items()
    }
    write_json(args.output, report)
    trace_path = args.output.with_name(args.output.stem + "-arrivals.json")
    trace_path.write_text(json.dumps(traces, separators=(",", ":")) + "\n")
    png = args.output.with_suffix(".png")
    for policy, rows in results.items():
        for name, r in rows.items():
            r["arrivals"] = traces[policy][name]
    if results:
        plot(results, requests, per, png)
    print(f"\nwritten {shown(args.output)}, {shown(trace_path)} and {shown(png)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
